"""Steps correct and accuracy by number of steps (task_accuracy's steps_correct, group_by) on fixed generations."""

import math
import types

import pytest

from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext
from posttrain.eval.metrics.answers import TaskAccuracyOptions, task_accuracy
from posttrain.eval.metrics.chains import steps_values
from posttrain.tasks import get_task

WP = {"task": "word_problems", "task_options": {"num_steps": [2, 3, 4]}}


def test_steps_values_is_a_ratio_of_sums_over_chains_with_steps():
    values = steps_values([(2, 2), (1, 3), (0, 0), (3, 3)])
    assert values["steps_correct"].value == 6 / 8 and values["steps_correct"].n == 3
    # delta method: sqrt(n / (n - 1) * sum (c_i - R t_i)^2) / sum t_i, R = 3/4
    residuals = (2 - 1.5) ** 2 + (1 - 2.25) ** 2 + (3 - 2.25) ** 2
    assert values["steps_correct"].stderr == pytest.approx(math.sqrt(3 / 2 * residuals) / 8)
    assert values["steps_written"].value == 2.0 and values["steps_written"].n == 4
    assert steps_values([(0, 0)])["steps_correct"].value is None  # direct answers: nothing to score


def corrupt(step):
    """The equation with its result off by one: a wrong step."""
    left, right = step.split(" = ")
    return f"{left} = {int(right) + 1}"


def chain(problem, wrong_steps=0, right_answer=True):
    steps = problem.meta["steps"]
    written = [corrupt(s) if i < wrong_steps else s for i, s in enumerate(steps)]
    answer = int(problem.answer) + (0 if right_answer else 1)
    return ". ".join(written) + f". The answer is {answer}."


def test_steps_correct_and_accuracy_by_steps_on_hand_made_chains(tiny_model, tokenizer, monkeypatch):
    problems = get_task("word_problems", num_steps=[2, 3, 4]).problems("eval", 6, seed=0)  # steps 2, 3, 4, 2, 3, 4
    assert [len(p.meta["steps"]) for p in problems] == [2, 3, 4, 2, 3, 4]
    greedy = [chain(problems[0]), chain(problems[1], wrong_steps=1), chain(problems[2], 2, right_answer=False),
              "The answer is 1.", chain(problems[4], right_answer=False), chain(problems[5], wrong_steps=4)]
    # correct steps / written: 2/2, 2/3, 2/4, 0/0, 3/3, 0/4; answers right: yes, yes, no, no, no, yes

    def fake_generate(handle, prompts, max_new_tokens, temperature=0.0, samples=1, top_p=1.0):
        assert prompts == [p.prompt for p in problems]
        if temperature == 0.0:
            return types.SimpleNamespace(texts=greedy)
        # self-consistency: 3 chains each; the vote is right on the 3-step problems only
        return types.SimpleNamespace(texts=[chain(p, right_answer=len(p.meta["steps"]) == 3 or s == 0)
                                            for p in problems for s in range(samples)])

    context = EvalContext(tiny_model, tokenizer, "tiny")
    monkeypatch.setattr(context, "generate", fake_generate)
    result = task_accuracy(context, TaskAccuracyOptions(**WP, n=6, steps_correct=True, group_by="steps",
                                                        self_consistency=3))
    v = {name: (value.value, value.n) for name, value in result.values.items()}
    assert v["accuracy"] == (0.5, 6)
    assert v["steps_correct"] == (pytest.approx(9 / 16), 5) and v["steps_written"] == (16 / 6, 6)
    assert v["accuracy/steps=2"] == (0.5, 2) and v["accuracy/steps=3"] == (0.5, 2) and v["accuracy/steps=4"] == (0.5, 2)
    assert v["steps_correct/steps=2"] == (1.0, 1)  # the direct answer wrote no step
    assert v["steps_correct/steps=3"] == (pytest.approx(5 / 6), 2) and v["steps_correct/steps=4"] == (0.25, 2)
    assert v["self_consistency@3"] == (pytest.approx(1 / 3), 6)
    assert v["self_consistency@3/steps=3"] == (1.0, 2) and v["self_consistency@3/steps=2"] == (0.0, 2)
    assert [(s["steps"], s["steps_correct"], s["steps_written"]) for s in result.samples] == [
        (2, 2, 2), (3, 2, 3), (4, 2, 4), (2, 0, 0), (3, 3, 3), (4, 0, 4)]


def test_long_addition_by_digits_checks_columns(tiny_model, tokenizer, monkeypatch):
    task = get_task("long_addition")
    problems = task.problems("eval", 4, seed=0)  # digits 4, 5, 4, 5
    greedy = [p.meta["solution"] for p in problems]
    greedy[1] = greedy[1].replace("Ones:", "Ones: 0 + 0 + 0 = 0, write 0, carry 0, so far 0. Tens:", 1)
    context = EvalContext(tiny_model, tokenizer, "tiny")
    monkeypatch.setattr(context, "generate", lambda *a, **k: types.SimpleNamespace(texts=greedy))
    result = task_accuracy(context, TaskAccuracyOptions(task="long_addition", n=4, steps_correct=True,
                                                        group_by="digits"))
    # the inserted column shifts problem 1's columns: every line after it is the wrong column
    assert [s["steps_correct"] for s in result.samples] == [4, 0, 4, 5]
    assert [s["steps_written"] for s in result.samples] == [4, 6, 4, 5]
    assert result.values["accuracy/digits=4"].value == 1.0 and result.values["accuracy/digits=5"].value == 1.0
    assert result.values["steps_correct/digits=5"].value == pytest.approx(5 / 11)


def test_options_are_checked_before_generating():
    with pytest.raises(ConfigError, match="no 'hops'; they have: key, template, steps"):
        TaskAccuracyOptions(**WP, group_by="hops")
    with pytest.raises(ConfigError, match="steps_correct needs numeric answers"):
        TaskAccuracyOptions(task="constraints", steps_correct=True)


def test_grouped_values_reach_evaluation_json(tiny_model, tokenizer, monkeypatch, tmp_path):
    from posttrain.eval import evaluate

    def fake_generate(self, handle, prompts, max_new_tokens, temperature=0.0, samples=1, top_p=1.0):
        return types.SimpleNamespace(texts=["2 + 2 = 4. The answer is 4."] * len(prompts))

    monkeypatch.setattr(EvalContext, "generate", fake_generate)
    entry = {"metric": "task_accuracy", "name": "multistep", **WP, "n": 3, "steps_correct": True, "group_by": "steps"}
    evaluation = evaluate((tiny_model, tokenizer), suite=[entry], out=tmp_path / "evaluation.json", progress=False)
    metrics = evaluation["metrics"]
    assert metrics["multistep/steps_correct"]["value"] == 1.0 and metrics["multistep/steps_correct"]["n"] == 3
    assert {"multistep/accuracy/steps=2", "multistep/accuracy/steps=3", "multistep/accuracy/steps=4"} <= set(metrics)
    assert metrics["multistep/accuracy/steps=4"]["n"] == 1


def test_experiment_suites_evaluate_the_shipped_held_out_problems():
    import json
    from pathlib import Path

    from posttrain.eval.suite import load_suite

    root = Path(__file__).resolve().parents[2]
    for suite, data in (("eval_multistep_cot", "multistep_cot_eval"), ("eval_multistep_direct", "multistep_direct_eval"),
                        ("eval_addition_scratchpad", "addition_scratchpad_eval"),
                        ("eval_addition_direct", "addition_direct_eval")):
        options = load_suite(root / "configs" / "cot" / f"{suite}.yaml").entries[0].options
        problems = get_task(options.task, **options.task_options).problems("eval", options.n, seed=0)
        rows = [json.loads(line) for line in (root / "data" / "cot" / f"{data}.jsonl").read_text().splitlines()]
        assert [p.prompt for p in problems] == [r["prompt"] for r in rows], suite
