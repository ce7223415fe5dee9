"""The step checker: every equation of a chain checked on its own."""

from posttrain.data.cot import cot_rows
from posttrain.tasks.steps import check_steps


def test_check_steps_counts_each_equation():
    assert check_steps("7 * 3 = 21. 21 + 5 = 26. The answer is 26.") == (2, 2)
    assert check_steps("7 * 3 = 24. 24 + 5 = 29. The answer is 29.") == (1, 2)  # the slip is in step 1 only
    assert check_steps("12 / 0 = 0. 10 - 4 = 6") == (1, 2)
    assert check_steps("The answer is 5.") == (0, 0)


def test_every_shipped_solution_checks_out():
    cot, _ = cot_rows("train", 200)
    for row in cot:
        assert check_steps(row["completion"]) == (row["steps"], row["steps"]), row
