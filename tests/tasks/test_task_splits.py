"""Every task: train and eval never overlap, generation is deterministic, rewards lie in [0, 1]; the registry."""

import json
import subprocess
import sys

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks import TASKS, Problem, get_task, split_of

MALFORMED = ["", "   ", "\x00\ufffd", "The answer is", "{not json", "- \n- ", "NaN", "-" * 500, "9" * 400]


@pytest.mark.parametrize("name", list(TASKS))
def test_train_and_eval_never_overlap(name):
    task = get_task(name)
    train, evaluation = task.problems("train", 2000, seed=0), task.problems("eval", 200, seed=0)
    assert len({p.key for p in train}) == 2000 and len({p.key for p in evaluation}) == 200
    assert not {p.key for p in train} & {p.key for p in evaluation}
    assert not {p.split_key for p in train} & {p.split_key for p in evaluation}
    assert not {p.prompt for p in train} & {p.prompt for p in evaluation}
    assert all(split_of(p.split_key) == "eval" for p in evaluation)
    other_seed = task.problems("eval", 200, seed=1)  # a different seed draws from the same held-out side
    assert not {p.key for p in train} & {p.key for p in other_seed}


@pytest.mark.parametrize("name", list(TASKS))
def test_deterministic_and_prefix_stable(name):
    task = get_task(name)
    first = task.problems("train", 100, seed=7)
    assert first == get_task(name).problems("train", 100, seed=7)
    assert first[:40] == task.problems("train", 40, seed=7)
    assert first != task.problems("train", 100, seed=8)
    assert task.problems("eval", 0) == []


@pytest.mark.parametrize("name", list(TASKS))
def test_rewards_lie_in_unit_interval(name):
    task = get_task(name)
    problems = task.problems("eval", 30)
    completions = MALFORMED + [p.meta.get("solution", p.answer) for p in problems] + [p.prompt for p in problems]
    for problem in problems:
        for completion in completions:
            reward = task.reward(problem, completion)
            assert 0.0 <= reward <= 1.0
            assert isinstance(task.is_correct(problem, completion), bool)
    accuracy = task.accuracy(problems, MALFORMED[:1] * len(problems))
    assert accuracy == 0.0
    with pytest.raises(ValueError):
        task.accuracy(problems, ["x"])


def test_accuracy_counts_correct_completions():
    task = get_task("arithmetic")
    problems = task.problems("eval", 4)
    completions = [problems[0].meta["solution"], problems[1].answer, "nothing", "The answer is 100000."]
    assert task.accuracy(problems, completions) == 0.5


def test_problem_round_trips_through_json():
    p = get_task("constraints").problems("train", 1)[0]
    assert Problem.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_arithmetic_split_matches_the_shipped_sft_data():
    """The task keys its split on the bare question, like data/synthetic.py: no held-out task question was trained on."""
    evaluation = get_task("arithmetic", digits=2, operations="+-", instruction="").problems("eval", 200)
    with open("data/sft/arithmetic_train.jsonl") as f:
        sft_prompts = {json.loads(line)["prompt"] for line in f}
    assert not {p.prompt for p in evaluation} & sft_prompts


def test_get_task_errors_name_what_is_valid():
    with pytest.raises(ConfigError, match="unknown task 'algebra'; known tasks: arithmetic, word_problems"):
        get_task("algebra")
    with pytest.raises(ConfigError, match=r"task 'arithmetic' has no option 'digit'; its options are: .*digits"):
        get_task("arithmetic", digit=3)
    with pytest.raises(ConfigError, match="split must be one of"):
        get_task("verbosity").problems("test", 3)


def test_tasks_import_only_the_standard_library():
    code = (
        "import sys; import posttrain.tasks; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'transformers', 'yaml') "
        "or (m.startswith('posttrain.') and not m.startswith(('posttrain.tasks', 'posttrain.errors', 'posttrain.version')))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
