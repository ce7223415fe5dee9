"""Arithmetic: answer extraction, the reward rule (exact, partial credit, format) and the generator's options."""

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks import Problem, extract_answer, get_task, parse_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("47 - 18 = 29. The answer is 29.", 29),
        ("The answer is -12.", -12),
        ("The answer is \u221212.", -12),  # Unicode minus
        ("The answer is 1,234.", 1234),
        ("the final answer is: **-7**", -7),
        ("Answer: 41", 41),
        ("The answer is 29", 29),  # no period
        ("I think it is 3, then 5, so 8.", 8),  # no answer phrase: the last number
        ("47-18=29", 29),  # the "-" between digits is subtraction, not a sign
        ("x = -5", -5),
        ("The answer is 5. Wait, no. The answer is 7.", 7),  # the last statement wins
        ("The answer is 2.5.", 2.5),
        ("The answer is 30.0.", 30),
        ("1,2,3", 3),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_parse_answer_is_the_strict_form():
    assert parse_answer("So 47 - 18 = 29. The answer is 29.") == 29
    assert parse_answer("The answer is -3. Done") == -3
    assert parse_answer("The answer is 29") is None  # the requested form has its period
    assert parse_answer("the answer: 29.") is None
    assert parse_answer("29") is None


def _problem(answer=29):
    return Problem("What is 47 - 18? Reply with the final answer as 'The answer is N.'", str(answer), {})


def test_reward_right_wrong_malformed():
    task = get_task("arithmetic", partial_credit=0.25, format_weight=0.1)
    p = _problem()
    assert task.reward(p, "47 - 18 = 29. The answer is 29.") == pytest.approx(1.0)
    assert task.reward(p, "29") == pytest.approx(0.9)  # right number, no format
    assert task.is_correct(p, "29") and task.is_correct(p, "The answer is 29.")
    wrong = task.reward(p, "The answer is 31.")
    assert 0.1 < wrong < 0.1 + 0.9 * 0.25 and not task.is_correct(p, "The answer is 31.")
    assert task.reward(p, "The answer is 1000.") == pytest.approx(0.1)  # far off: format only
    assert task.reward(p, "I don't know") == 0.0 and not task.is_correct(p, "I don't know")
    assert task.reward(p, "") == 0.0


def test_partial_credit_is_monotone_in_the_error_and_capped():
    task = get_task("arithmetic", partial_credit=0.3, format_weight=0.0)
    p = _problem(100)
    rewards = [task.reward(p, f"The answer is {100 + err}.") for err in range(0, 120, 5)]
    assert rewards[0] == 1.0
    assert all(a > b or b == 0.0 for a, b in zip(rewards, rewards[1:]))
    assert max(rewards[1:]) <= 0.3 and rewards[-1] == 0.0
    below = [task.reward(p, f"The answer is {100 - err}.") for err in range(1, 100, 7)]
    assert below == sorted(below, reverse=True)
    assert get_task("arithmetic", partial_credit=0.0).reward(p, "The answer is 99.") == pytest.approx(0.1)


def test_answer_zero_and_negative_answers():
    task = get_task("arithmetic", format_weight=0.0)
    assert task.reward(_problem(0), "The answer is 0.") == 1.0
    assert 0 < task.reward(_problem(-5), "The answer is -4.") < 0.25
    assert task.reward(_problem(-5), "The answer is 5.") == 0.0


def test_generator_options():
    task = get_task("arithmetic", digits=3, operations="*")
    for p in task.problems("train", 50):
        a, op, b = p.meta["a"], p.meta["op"], p.meta["b"]
        assert op == "*" and 100 <= a <= 999 and 100 <= b <= 999 and int(p.answer) == a * b
        assert p.prompt == f"What is {a} * {b}? Reply with the final answer as 'The answer is N.'"
        assert task.reward(p, p.meta["solution"]) == 1.0
    mixed = get_task("arithmetic", operations=["+", "-", "*"], mul_digits=1).problems("train", 300)
    assert {p.meta["op"] for p in mixed} == {"+", "-", "*"}
    assert all(p.meta["a"] <= 9 for p in mixed if p.meta["op"] == "*")
    assert all(int(p.answer) >= 0 for p in mixed)
    negative = get_task("arithmetic", operations="-", negative=True).problems("train", 100)
    assert any(int(p.answer) < 0 for p in negative)
    plain = get_task("arithmetic", instruction="").problems("eval", 1)[0]
    assert plain.prompt == plain.key and plain.prompt.startswith("What is ")


@pytest.mark.parametrize("options", [{"operations": "/"}, {"operations": ""}, {"digits": 0}, {"digits": "2"},
                                     {"partial_credit": 1.5}, {"format_weight": -0.1}])
def test_bad_options(options):
    with pytest.raises(ConfigError, match="arithmetic"):
        get_task("arithmetic", **options)


def test_small_problem_space_says_so():
    with pytest.raises(ConfigError, match="distinct eval problems"):
        get_task("arithmetic", digits=1, operations="+").problems("eval", 200)
