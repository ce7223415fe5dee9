"""The constitution metric: each checker's compliance and `all` counted by hand on fixed answers, a raising checker
is recorded as a failure instead of failing the metric, task prompts are the task's held-out problems, and bad
input names the file or row."""

import json
from pathlib import Path

import pytest

from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext
from posttrain.eval.metrics import METRICS
from posttrain.eval.metrics.constitution import ConstitutionOptions, constitution
from posttrain.rollout.constitution import load_constitution
from posttrain.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


def raises_on_boom(prompt: str, response: str) -> bool:
    if "boom" in response:
        raise ValueError("boom")
    return True


class Texts:
    def __init__(self, texts):
        self.texts = texts


def test_compliance_counted_by_hand_on_fixed_answers(tmp_path, tiny_model, tokenizer, monkeypatch):
    spec = {"name": "t", "principles": [
        {"name": "short", "critique": "c", "revision": "r", "checker": {"word_limit": 3}},
        {"name": "answer", "critique": "c", "revision": "r", "checker": {"required_pattern": "answer is"}},
        {"name": "safe", "critique": "c", "revision": "r",
         "checker": {"function": "tests.eval.test_constitution_metric:raises_on_boom"}},
        {"name": "free", "critique": "c", "revision": "r"}]}
    (tmp_path / "c.json").write_text(json.dumps(spec))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in "abcd"))
    answers = {"a": "The answer is 4.", "b": "one two three four five", "c": "answer is boom", "d": "no"}
    context = EvalContext(tiny_model, tokenizer, "tiny")
    monkeypatch.setattr(context, "generate", lambda policy, prompts, n: Texts([answers[p] for p in prompts]))
    result = constitution(context, ConstitutionOptions(constitution=str(tmp_path / "c.json"),
                                                       prompts=str(tmp_path / "p.jsonl"), n=4))
    values = {name: (v.value, v.n) for name, v in result.values.items()}
    # short: a (4 words: no), b no, c (3) yes, d yes; answer: a, c; safe: a, b, d (c raises); all: over a, b, d
    assert values == {"short": (0.5, 4), "answer": (0.5, 4), "safe": (1.0, 3), "all": (0.0, 3)}
    assert all(v.higher_is_better for v in result.values.values())
    assert [f["index"] for f in result.failures] == [2] and "safe checker" in result.failures[0]["error"]
    assert result.samples[0] == {"prompt": "a", "output": answers["a"], "short": False, "answer": True, "safe": True}


def test_task_prompts_are_the_held_out_problems_and_values_match_the_checkers(tiny_model, tokenizer):
    assert METRICS["constitution"][1] is constitution
    options = ConstitutionOptions(n=5, max_new_tokens=6)  # the shipped concise constitution, arithmetic
    context = EvalContext(tiny_model, tokenizer, "tiny", seed=3)
    result = constitution(context, options)
    problems = get_task("arithmetic").problems("eval", 5, 3)
    assert [s["prompt"] for s in result.samples] == [p.prompt for p in problems]
    for principle in load_constitution(ROOT / "configs/constitutions/concise.yaml").principles:
        expected = [principle.complies(s["prompt"], s["output"]) for s in result.samples]
        assert result.values[principle.name].value == pytest.approx(sum(expected) / 5)


def test_bad_input_names_the_file_or_row(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"name": "t", "principles": [
        {"name": "free", "critique": "c", "revision": "r"}]}))
    with pytest.raises(ConfigError, match="c.json has no principle with a checker"):
        ConstitutionOptions(constitution=str(tmp_path / "c.json"))
    with pytest.raises(ConfigError, match="unknown task"):
        ConstitutionOptions(task="nope")
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ConfigError, match="p.jsonl.*'prompt' column"):
        constitution(EvalContext(None, None, "tiny"), ConstitutionOptions(prompts=str(tmp_path / "p.jsonl")))
