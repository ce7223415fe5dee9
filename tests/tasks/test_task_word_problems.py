"""Word problems: templates give 2-3 step problems with positive integer answers; the checker."""

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks import get_task
from posttrain.tasks.word_problems import TEMPLATES


def test_every_template_is_consistent():
    task = get_task("word_problems")
    problems = task.problems("train", 400, seed=3)
    assert {p.meta["template"] for p in problems} == set(TEMPLATES)
    for p in problems:
        assert 2 <= len(p.meta["steps"]) <= 3
        assert int(p.answer) > 0
        last = p.meta["steps"][-1]
        assert int(last.split("=")[-1]) == int(p.answer)
        for step in p.meta["steps"]:  # each equation is true
            lhs, rhs = step.split("=")
            assert eval(lhs.replace("/", "//")) == int(rhs)  # noqa: S307 (our own digits and operators)
        assert "step by step" in p.prompt and "The answer is N." in p.prompt
        assert task.reward(p, p.meta["solution"]) == 1.0


def test_checker_right_wrong_malformed():
    task = get_task("word_problems")
    p = next(p for p in task.problems("train", 50) if p.meta["template"] == "shopping")
    answer = int(p.answer)
    assert task.is_correct(p, f"First ... then ... The answer is {answer}.")
    assert task.reward(p, f"The answer is {answer + 1}.") == pytest.approx(0.1)  # no partial credit by default
    assert task.reward(p, "It costs a lot.") == 0.0
    assert not task.is_correct(p, "It costs a lot.")
    partial = get_task("word_problems", partial_credit=0.5)
    assert partial.reward(p, f"The answer is {answer + 1}.") > 0.1


def test_bad_template():
    with pytest.raises(ConfigError, match="templates"):
        get_task("word_problems", templates=["cooking"])
    assert {p.meta["template"] for p in get_task("word_problems", templates=["ages"]).problems("eval", 20)} == {"ages"}
