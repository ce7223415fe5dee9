"""Win rate and judge quality: the LM judge reads both orders (position bias cancels), identical answers are not
judged, a failing judge costs one prompt, judge_quality counts agreement, abstention, consistency and calibration."""

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext
from posttrain.eval.metrics import judges as judge_metrics
from posttrain.eval.metrics.judges import (
    JudgeAgreementOptions,
    WinRateOptions,
    judge_agreement,
    judge_quality,
    win_rate,
)
from posttrain.models import LoraSettings, apply_lora, build_tiny_model
from posttrain.rollout.judges import Verdict


def lora_context(tokenizer):
    model = apply_lora(build_tiny_model(), LoraSettings(r=4, dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)) * 0.5
    return EvalContext(model.eval(), tokenizer, "lora-tiny")


def test_win_rate_of_a_lora_model_against_its_base_with_the_log_prob_judge(tokenizer):
    context = lora_context(tokenizer)
    result = win_rate(context, WinRateOptions(judge={"pairwise": "tiny"}, limit=4, max_new_tokens=8))
    assert result.details["baseline"].endswith("(adapters off)")
    assert all({"output", "baseline_output", "probability", "orders", "win"} <= set(s) for s in result.samples)
    wins = [s["win"] for s in result.samples]
    assert wins == [1.0 if s["probability"] > 0.5 else 0.0 if s["probability"] < 0.5 else 0.5
                    for s in result.samples]
    assert result.values[""].value == pytest.approx(sum(wins) / len(wins))
    assert result.values["win_probability"].value == pytest.approx(
        sum(s["probability"] for s in result.samples) / len(wins))


def test_identical_answers_tie_unjudged_and_a_failing_judge_costs_one_prompt(tokenizer, monkeypatch):
    calls = []

    def judge(prompts, firsts, seconds):
        calls.append(list(prompts))
        if len(prompts) == 1 and prompts[0] == "boom":
            raise RuntimeError("judge broke")
        if "boom" in prompts:
            raise RuntimeError("batch fails")
        return [Verdict(0.9) for _ in prompts]

    context = lora_context(tokenizer)
    monkeypatch.setattr(judge_metrics, "context_judge", lambda context, spec: judge)
    answers = {"p": "same", "q": "mine", "boom": "mine"}
    baseline_answers = {"p": "same", "q": "theirs", "boom": "theirs"}

    class Texts:
        def __init__(self, texts):
            self.texts = texts

    def generate(handle, prompts, max_new_tokens):
        table = baseline_answers if handle.adapters_off else answers
        return Texts([table[p] for p in prompts])

    monkeypatch.setattr(context, "generate", generate)
    monkeypatch.setattr(judge_metrics, "load_prompts", lambda path, limit: [type("P", (), {"prompt": p})()
                                                                            for p in ("p", "q", "boom")])
    result = win_rate(context, WinRateOptions(judge={"pairwise": "tiny"}))
    assert "p" not in sum(calls, [])  # identical answers: no question asked
    assert [s["win"] for s in result.samples] == [0.5, 1.0, None]
    assert [f["index"] for f in result.failures] == [2] and "judge broke" in result.failures[0]["error"]
    assert result.values[""].value == 0.75 and result.values[""].n == 2


def test_judge_quality_counts_agreement_abstention_consistency_and_calibration():
    verdicts = [Verdict(0.95, consistent=True), Verdict(0.92, consistent=True), Verdict(0.35, consistent=False),
                Verdict(0.55, consistent=True), Verdict(0.5, abstained=True, consistent=False),
                Verdict(0.8, abstained=True, consistent=True)]
    values = judge_quality(verdicts, bins=5)
    assert values[""].value == pytest.approx(3 / 4) and values[""].n == 4  # decided: .95 .92 .35 .55
    assert values["agreement_all"].value == pytest.approx((1 + 1 + 0 + 1 + 0.5 + 0.5) / 6)
    assert values["abstention_rate"].value == pytest.approx(2 / 6)
    assert values["position_consistency"].value == pytest.approx(4 / 6)
    assert values["calibration/0.90-1.00"].value == 1.0 and values["calibration/0.90-1.00"].n == 2
    assert values["calibration/0.60-0.70"].value == 0.0  # p = 0.35: confidence 0.65, disagrees
    assert values["calibration/0.50-0.60"].value == 1.0
    none_decided = judge_quality([Verdict(0.5, abstained=True)] * 3)
    assert none_decided[""].value is None and none_decided[""].n == 0
    assert none_decided["abstention_rate"].value == 1.0 and none_decided["agreement_all"].value == 0.5


def test_judge_agreement_of_a_rule_judge_on_a_labelled_pair_file(write_jsonl, tokenizer):
    rows = [{"prompt": "What is 2 + 3?", "chosen": "The answer is 5.", "rejected": "The answer is 6.", "answer": "5"},
            {"prompt": "What is 4 + 4?", "chosen": "The answer is 8.", "rejected": "Eight, or 9.", "answer": "8"},
            {"prompt": "What is 1 + 1?", "chosen": "The answer is 2.", "rejected": "The answer is 2.", "answer": "2"}]
    path = write_jsonl("pairs.jsonl", rows)
    context = EvalContext(build_tiny_model().eval(), tokenizer, "tiny")
    result = judge_agreement(context, JudgeAgreementOptions(pairs=str(path), judge={"rule": "arithmetic"}))
    assert result.values[""].value == 1.0 and result.values[""].n == 2
    assert result.values["abstention_rate"].value == pytest.approx(1 / 3)
    bad = write_jsonl("bad.jsonl", [{"prompt": "x", "chosen": "y"}])
    with pytest.raises(ConfigError, match="bad.jsonl.*rejected"):
        judge_agreement(context, JudgeAgreementOptions(pairs=str(bad), judge={"rule": "arithmetic"}))


def test_judge_options_are_checked():
    with pytest.raises(ConfigError, match="exactly one"):
        WinRateOptions(judge={"llm": "tiny", "reward_model": "x"})
    with pytest.raises(ConfigError, match="unknown key"):
        JudgeAgreementOptions(judge={"pairwise": "tiny", "samples": 3})
