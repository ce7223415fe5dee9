"""Reward functions: loading `module:function`, output checks, weighted combination with per-function values."""

import math

import pytest

from posttrain.errors import ConfigError
from posttrain.rollout import CombinedReward, RewardSpec, WeightedReward, build_reward, load_function
from posttrain.tasks import Problem, get_task

USER_MODULE = '''
def brevity(prompts, completions, problems, limit=3):
    return [1.0 if len(c.split()) <= limit else 0.0 for c in completions]

def short_list(prompts, completions, problems):
    return [1.0]

def nan_reward(prompts, completions, problems):
    return [float("nan")] * len(completions)

def text_reward(prompts, completions, problems):
    return ["high"] * len(completions)

def scalar(prompts, completions, problems):
    return 1.0

class Scorer:
    @staticmethod
    def score(prompts, completions, problems):
        return [0.5 for _ in completions]

NOT_CALLABLE = 42
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_for_tests.py").write_text(USER_MODULE)
    (tmp_path / "broken_rewards_for_tests.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_for_tests"


def _batch():
    task = get_task("arithmetic")
    problems = task.problems("eval", 3)
    completions = [problems[0].meta["solution"], f"The answer is {int(problems[1].answer) + 1000}.", "no idea"]
    return task, [p.prompt for p in problems], completions, problems


def test_load_function_good(user_module):
    fn = load_function(f"{user_module}:brevity")
    assert fn(["p"], ["a b", "a b c d"], [None, None]) == [1.0, 0.0]
    assert load_function(f"{user_module}:Scorer.score")([], ["x"], []) == [0.5]
    assert load_function("math:sqrt")(4) == 2.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon_here", "expected 'package.module:function'"),
        ("my_rewards_for_tests:", "expected 'package.module:function'"),
        (":brevity", "expected 'package.module:function'"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("broken_rewards_for_tests:fn", "not_a_real_package_xyz"),
        ("my_rewards_for_tests:missing", "has no attribute 'missing'"),
        ("my_rewards_for_tests:Scorer.nope", "has no attribute 'nope'"),
        ("my_rewards_for_tests:NOT_CALLABLE", "is a int, not a callable"),
    ],
)
def test_load_function_bad_specs_name_the_spec(user_module, spec, message):
    with pytest.raises(ConfigError) as info:
        load_function(spec)
    assert repr(spec) in str(info.value) and message in str(info.value)


def test_weighted_combination_logs_each_function(user_module):
    task, prompts, completions, problems = _batch()
    reward = build_reward(
        [{"name": "arithmetic", "weight": 1.0},
         {"function": f"{user_module}:brevity", "weight": 0.5, "options": {"limit": 2}},
         RewardSpec(name="verbosity", weight=-0.25, options={"limit": 4})],
        task,
    )
    totals, per = reward(prompts, completions, problems)
    assert list(per) == ["arithmetic", f"{user_module}:brevity", "verbosity"]
    assert per["arithmetic"] == [task.reward(p, c) for p, c in zip(problems, completions)]
    assert per["arithmetic"][0] == 1.0 and per["arithmetic"][2] == 0.0
    assert per[f"{user_module}:brevity"] == [0.0, 0.0, 1.0]
    for i in range(3):
        expected = per["arithmetic"][i] + 0.5 * per[f"{user_module}:brevity"][i] - 0.25 * per["verbosity"][i]
        assert totals[i] == pytest.approx(expected)


def test_default_reward_is_the_task_and_its_options_are_kept():
    task = get_task("arithmetic", format_weight=0.5)
    _, prompts, _, problems = _batch()
    totals, per = build_reward(None, task)(prompts, ["42"] * 3, problems)
    assert list(per) == ["arithmetic"] and all(t <= 0.5 for t in totals)  # the configured task, not a default one
    totals, _ = build_reward([{"name": "arithmetic", "options": {"format_weight": 0.0}}], task)(
        prompts, [p.answer for p in problems], problems)
    assert totals == [1.0, 1.0, 1.0]


def test_duplicate_labels_get_suffixes():
    task, prompts, completions, problems = _batch()
    reward = build_reward([{"name": "arithmetic"}, {"name": "arithmetic", "weight": 2.0}], task)
    totals, per = reward(prompts, completions, problems)
    assert list(per) == ["arithmetic", "arithmetic_2"]
    assert totals == pytest.approx([3 * v for v in per["arithmetic"]])


@pytest.mark.parametrize("function, message", [("short_list", "returned 1 values for 3 completions"),
                                               ("nan_reward", "finite"), ("text_reward", "finite"),
                                               ("scalar", "must return a list")])
def test_bad_return_values_are_caught(user_module, function, message):
    task, prompts, completions, problems = _batch()
    reward = build_reward([{"function": f"{user_module}:{function}"}], task)
    with pytest.raises(ConfigError, match=message) as info:
        reward(prompts, completions, problems)
    assert function in str(info.value)


@pytest.mark.parametrize(
    "entry, message",
    [({"weight": 1.0}, "exactly one of"), ({"name": "arithmetic", "function": "m:f"}, "exactly one of"),
     ({"name": "arithmetic", "weight": math.inf}, "finite"), ({"name": "arithmetic", "weight": "1"}, "finite"),
     ({"name": "arithmetic", "wieght": 1}, "unknown key 'wieght'"), ({"name": "algebra"}, "unknown task"),
     ({"name": "arithmetic", "options": {"digitz": 1}}, "no option 'digitz'"), ("arithmetic", "must be a mapping")],
)
def test_bad_specs(entry, message):
    with pytest.raises(ConfigError, match=message):
        build_reward([entry], get_task("arithmetic"))


def test_combined_reward_checks_batch_shapes():
    reward = CombinedReward([WeightedReward("one", 1.0, lambda p, c, pr: [1.0] * len(c))])
    assert reward(["p"], ["c"], [Problem("p", "1", {})]) == ([1.0], {"one": [1.0]})
    with pytest.raises(ValueError):
        reward(["p"], ["c", "d"], [Problem("p", "1", {})])
    with pytest.raises(ConfigError):
        CombinedReward([])
    with pytest.raises(ConfigError, match="no rewards configured"):
        build_reward([], None)
