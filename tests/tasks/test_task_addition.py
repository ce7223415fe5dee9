"""Long addition (Nye et al. 2021 scratchpads): the scratchpad's columns, the step checker, the two formats."""

from collections import Counter

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks import get_task
from posttrain.tasks.addition import check_scratchpad, scratchpad

WORKED = """Ones: 8 + 4 + 0 = 12, write 2, carry 1, so far 2.
Tens: 3 + 9 + 1 = 13, write 3, carry 1, so far 32.
Hundreds: 7 + 8 + 1 = 16, write 6, carry 1, so far 632.
Thousands: 4 + 5 + 1 = 10, write 0, carry 1, so far 0632.
Final carry 1, so far 10632.
The answer is 10632."""


def test_scratchpad_writes_every_column_with_its_carry():
    assert scratchpad(4738, 5894) == WORKED
    assert scratchpad(1203, 4512).splitlines()[-2:] == ["Thousands: 1 + 4 + 0 = 5, write 5, carry 0, so far 5715.",
                                                        "The answer is 5715."]  # no carry out: no final line


def test_check_scratchpad_counts_right_and_wrong_columns():
    assert check_scratchpad(4738, 5894, WORKED) == (4, 4)
    slipped = WORKED.replace("3 + 9 + 1 = 13, write 3", "3 + 9 + 1 = 14, write 4")
    assert check_scratchpad(4738, 5894, slipped) == (3, 4)
    dropped_carry = WORKED.replace("7 + 8 + 1 = 16", "7 + 8 + 0 = 15")  # right sum of the wrong carry in
    assert check_scratchpad(4738, 5894, dropped_carry) == (3, 4)
    wrong_digits = WORKED.replace("Tens: 3 + 9", "Tens: 9 + 3")  # correct arithmetic, not this sum's column
    assert check_scratchpad(4738, 5894, wrong_digits) == (3, 4)
    assert check_scratchpad(4738, 5894, WORKED + "\n" + WORKED.splitlines()[0]) == (4, 5)  # a fifth column: wrong
    assert check_scratchpad(4738, 5894, "The answer is 10632.") == (0, 0)


def test_formats_share_problems_and_digits_are_balanced():
    scratch = get_task("long_addition").problems("train", 40, seed=2)
    direct = get_task("long_addition", format="direct").problems("train", 40, seed=2)
    assert [p.key for p in scratch] == [p.key for p in direct]
    assert Counter(p.meta["digits"] for p in scratch) == {4: 20, 5: 20}
    for s, d in zip(scratch, direct):
        assert s.meta["a"] + s.meta["b"] == int(s.answer) == int(d.answer)
        assert len(str(s.meta["a"])) == len(str(s.meta["b"])) == s.meta["digits"]
        assert "column by column" in s.prompt and "Give only the final answer" in d.prompt
        assert d.meta["solution"] == f"The answer is {d.answer}."
        task = get_task("long_addition")
        assert task.reward(s, s.meta["solution"]) == 1.0 and task.is_correct(s, d.meta["solution"])
        assert task.check_steps(s, s.meta["solution"]) == (s.meta["digits"],) * 2


def test_options_are_checked():
    assert get_task("long_addition", digits=3).problems("eval", 3)[0].meta["digits"] == 3
    with pytest.raises(ConfigError, match="digits"):
        get_task("long_addition", digits=[0])
    with pytest.raises(ConfigError, match="format"):
        get_task("long_addition", format="steps")
