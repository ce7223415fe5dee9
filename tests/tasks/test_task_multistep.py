"""Word problems of an exact number of steps (num_steps): balanced, every equation true, default unchanged."""

from collections import Counter

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks import get_task
from posttrain.tasks.steps import check_steps, evaluate


def test_chained_problems_have_exactly_the_asked_steps_balanced_and_true():
    task = get_task("word_problems", num_steps=[2, 3, 4, 5, 6])
    for split, n in (("train", 500), ("eval", 100)):
        problems = task.problems(split, n, seed=1)
        assert Counter(len(p.meta["steps"]) for p in problems) == {k: n // 5 for k in (2, 3, 4, 5, 6)}
        assert [len(p.meta["steps"]) for p in problems[:10]] == [2, 3, 4, 5, 6] * 2  # in turn: prefixes balance too
        for p in problems:
            assert p.meta["template"] == "chain" and 2 <= int(p.answer) <= 999
            assert check_steps(p.meta["solution"]) == (len(p.meta["steps"]),) * 2, p.meta["solution"]
            # a chain: each equation after the first uses an earlier result, and the last result is the answer
            results = [int(step.split("=")[1]) for step in p.meta["steps"]]
            assert results[-1] == int(p.answer) and task.reward(p, p.meta["solution"]) == 1.0
            assert "step by step" in p.prompt and p.prompt.count("?") == 1


def test_default_is_unchanged_and_bad_num_steps_are_refused():
    default = get_task("word_problems").problems("eval", 50, seed=0)
    assert all(p.meta["template"] != "chain" and len(p.meta["steps"]) in (2, 3) for p in default)
    assert get_task("word_problems", num_steps=4).num_steps == (4,)
    for bad in ([], [0], [2, "3"], [11], [True]):
        with pytest.raises(ConfigError, match="num_steps"):
            get_task("word_problems", num_steps=bad)


def test_multi_operand_equations_follow_precedence():
    assert evaluate("2 + 3 * 4") == 14 and evaluate("10 - 4 - 3") == 3 and evaluate("8 / 2 / 2") == 2
    assert evaluate("5 / 0") is None
    # a scratchpad column "a + b + carry = s" is one equation, not "b + carry = s"
    assert check_steps("8 + 4 + 1 = 13. 2 + 3 * 4 = 20.") == (1, 2)
