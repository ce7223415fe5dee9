"""Win rate judged in both orders: position bias cancels, each order is asked once, real judges run."""

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext, ModelHandle
from posttrain.eval.metrics.judges import LLMJudge, RewardModelJudge, WinRateOptions, judge_both_orders, win_rate
from posttrain.models import LoraSettings, apply_lora, build_tiny_model

PROMPTS = ["q1", "q2", "q3", "q4"]
ANSWERS = ["a long answer", "a long answer too", "short", "another long answer"]
BASELINE = ["short", "tiny", "a much longer answer", "brief"]


def always_first(prompts, firsts, seconds):
    return [1.0] * len(prompts)


def longer_wins(prompts, firsts, seconds):
    return [float(len(a) > len(b)) for a, b in zip(firsts, seconds)]


def test_a_judge_that_always_picks_the_first_position_gives_one_half():
    records = judge_both_orders(always_first, PROMPTS, ANSWERS, BASELINE)
    assert [r["win"] for r in records] == [0.5] * 4
    assert [r["consistent"] for r in records] == [False] * 4


def test_a_position_free_judge_counts_wins_and_agrees_with_itself():
    records = judge_both_orders(longer_wins, PROMPTS, ANSWERS, BASELINE)
    assert [r["win"] for r in records] == [1.0, 1.0, 0.0, 1.0]
    assert all(r["consistent"] for r in records)


def test_each_order_is_judged_once_and_identical_answers_tie_without_the_judge():
    calls = []

    def judge(prompts, firsts, seconds):
        calls.append((list(firsts), list(seconds)))
        return [1.0] * len(prompts)

    records = judge_both_orders(judge, ["p", "q"], ["same", "mine"], ["same", "theirs"])
    assert calls == [(["mine"], ["theirs"]), (["theirs"], ["mine"])]
    assert records[0] == {"first": 0.5, "second": 0.5, "win": 0.5, "consistent": None}


def test_a_judge_failing_on_one_prompt_is_recorded():
    def judge(prompts, firsts, seconds):
        if "q2" in prompts:
            raise RuntimeError("judge broke")
        return [1.0] * len(prompts)

    failures = []
    records = judge_both_orders(judge, PROMPTS, ANSWERS, BASELINE, failures)
    assert records[1] is None and sum(r is None for r in records) == 1
    assert {f["index"] for f in failures} == {1} and "judge broke" in failures[0]["error"]


def test_reward_model_judge_scores_each_answer_once():
    scored = []

    def scorer(prompts, completions):
        scored.extend(zip(prompts, completions))
        return [float(len(c)) for c in completions]

    judge = RewardModelJudge(scorer)
    records = judge_both_orders(judge, PROMPTS, ANSWERS, BASELINE)
    assert [r["win"] for r in records] == [1.0, 1.0, 0.0, 1.0]
    assert len(scored) == len(set(scored)) == 8


def test_llm_judge_compares_the_letters_log_probs(tokenizer):
    handle = ModelHandle("tiny", build_tiny_model().eval(), tokenizer)
    judge = LLMJudge(handle, batch_size=3)
    verdicts = judge(PROMPTS, ANSWERS, BASELINE)
    assert len(verdicts) == 4 and set(verdicts) <= {0.0, 0.5, 1.0}
    # batching by length does not change a verdict: each question alone gives the same
    assert [judge([p], [a], [b])[0] for p, a, b in zip(PROMPTS, ANSWERS, BASELINE)] == verdicts


def test_win_rate_of_a_lora_model_against_its_base(tokenizer):
    model = apply_lora(build_tiny_model(), LoraSettings(r=4, dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)) * 0.5
    context = EvalContext(model.eval(), tokenizer, "lora-tiny")
    result = win_rate(context, WinRateOptions(judge={"llm": "tiny"}, limit=4, max_new_tokens=8))
    assert result.details["baseline"].endswith("(adapters off)")
    assert all({"output", "baseline_output", "first", "second", "win"} <= set(s) for s in result.samples)
    judged = [s["win"] for s in result.samples if s["win"] is not None]
    assert result.values[""].n == len(judged) and result.values[""].value == pytest.approx(sum(judged) / len(judged))


def test_judge_options_are_checked():
    with pytest.raises(ConfigError, match="exactly one"):
        WinRateOptions(judge={"llm": "tiny", "reward_model": "x"})
    with pytest.raises(ConfigError, match="template"):
        WinRateOptions(judge={"llm": "tiny", "template": "no placeholders"})
