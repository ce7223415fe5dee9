"""Verbosity: word counting (not tokens) and the smooth length reward."""

import math

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks import Problem, count_words, get_task


@pytest.mark.parametrize(
    "text, n",
    [("", 0), ("   \n\t ", 0), ("one", 1), ("Don't stop, e-mail me 3.5 times!", 6), ("- a\n- b", 2),
     ("**bold** ... -- !", 1), ("word\nword\tword", 3), ("\u00e9t\u00e9 caf\u00e9", 2)],
)
def test_count_words(text, n):
    assert count_words(text) == n


def test_reward_inside_and_beyond_the_limit():
    task = get_task("verbosity", decay=0.5)
    p = Problem("Describe owls. Answer in at most 10 words.", "10", {"word_limit": 10})
    assert task.reward(p, "Owls hunt at night.") == 1.0 and task.is_correct(p, "Owls hunt at night.")
    assert task.reward(p, " ".join(["w"] * 10)) == 1.0
    beyond = [task.reward(p, " ".join(["w"] * n)) for n in range(10, 60)]
    assert all(a > b for a, b in zip(beyond, beyond[1:]))  # strictly decreasing beyond the limit
    assert beyond[1] > 0.8  # one word over costs little
    assert task.reward(p, " ".join(["w"] * 20)) == pytest.approx(math.exp(-2))
    assert not task.is_correct(p, " ".join(["w"] * 11))
    assert task.reward(p, "") == 0.0 and not task.is_correct(p, "")


def test_generated_problems_and_fixed_limit():
    for p in get_task("verbosity", min_limit=5, max_limit=8).problems("train", 50):
        assert 5 <= p.meta["word_limit"] <= 8 and p.prompt.endswith(f"at most {p.meta['word_limit']} words.")
    fixed = get_task("verbosity", limit=4)
    assert {p.meta["word_limit"] for p in fixed.problems("eval", 20)} == {4}
    other = Problem("What is 2 + 2?", "4", {})  # another task's problem: the fixed limit applies
    assert fixed.reward(other, "The answer is 4.") == 1.0
    assert fixed.reward(other, "Well, the answer is 4.") < 1.0
    with pytest.raises(ConfigError, match="limit"):
        get_task("verbosity").reward(other, "4")


@pytest.mark.parametrize("options", [{"min_limit": 0}, {"min_limit": 9, "max_limit": 3}, {"decay": 0}])
def test_bad_options(options):
    with pytest.raises(ConfigError, match="verbosity"):
        get_task("verbosity", **options)
