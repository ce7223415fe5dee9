"""The pairwise judge with chain-of-thought: the verdict is the softmax over the two label tokens read after the
judge's own greedy reasoning (computed by hand with plain forwards), per order; both orders still cancel a constant
position bias; without cot nothing is generated and the verdicts carry no reasoning."""

import math

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.rollout import chat_prompts, judges
from posttrain.rollout.judge_specs import build_judge
from posttrain.rollout.judges import COT_SUFFIX, COT_TEMPLATE, PairwiseJudge, Verdict
from posttrain.rollout.label import pair_rows

PROMPTS = ["What is 2 + 2?", "Name a colour."]
FIRSTS = ["The answer is 4.", "Blue."]
SECONDS = ["It is five, I think, maybe.", "Green."]
STEPS = 6


@pytest.fixture
def model(sharp_model):
    return sharp_model  # tests/rollout/conftest.py


@torch.no_grad()
def greedy(model, ids, steps, eos):
    """Greedy decoding by full forwards: the reasoning tokens, without the end-of-turn token."""
    out = []
    for _ in range(steps):
        token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if token == eos:
            break
        out.append(token)
    return out


def test_cot_verdict_is_the_label_softmax_after_the_generated_reasoning(model, tokenizer):
    judge = PairwiseJudge(model, tokenizer, cot=True, cot_max_new_tokens=STEPS, batch_size=3)
    a_id, b_id = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in "AB")
    suffix = tokenizer(COT_SUFFIX, add_special_tokens=False)["input_ids"]
    verdicts = judge(PROMPTS, FIRSTS, SECONDS)
    for prompt, first, second, verdict in zip(PROMPTS, FIRSTS, SECONDS, verdicts):
        probabilities = []
        for order, (x, y) in enumerate(((first, second), (second, first))):
            ids = chat_prompts(tokenizer, [COT_TEMPLATE.format(prompt=prompt, first=x, second=y)])[0]
            reasoning = greedy(model, ids, STEPS, tokenizer.eos_token_id)
            assert verdict.reasoning[order] == tokenizer.decode(reasoning, skip_special_tokens=True)
            with torch.no_grad():
                logits = model(torch.tensor([ids + reasoning + suffix])).logits[0, -1].double()
            probabilities.append(torch.softmax(logits[[a_id, b_id]], 0)[order].item())  # the first's label
        assert verdict.orders == pytest.approx(probabilities, abs=1e-5)
        m1 = math.log(probabilities[0] / (1 - probabilities[0]))
        m2 = math.log((1 - probabilities[1]) / probabilities[1])
        assert verdict.probability == pytest.approx(1 / (1 + math.exp(-(m1 - m2) / 2)), abs=1e-5)
    assert verdicts[0].reasoning[0] != verdicts[0].reasoning[1]  # reasoned per order, not once per pair
    assert verdicts[0].to_dict()["reasoning"] == list(verdicts[0].reasoning)


def test_both_orders_still_cancel_a_constant_position_bias(model, tokenizer, monkeypatch):
    judge = PairwiseJudge(model, tokenizer, cot=True, cot_max_new_tokens=STEPS)
    unbiased = judge(PROMPTS, FIRSTS, SECONDS)
    real = judges.label_logps
    for bias in (-6.0, 3.0, 25.0):  # log p("A") + d after every reasoning: the judge leans towards "A"
        monkeypatch.setattr(judges, "label_logps",
                            lambda *args, bias=bias: real(*args) + torch.tensor([bias, 0.0]))
        biased = judge(PROMPTS, FIRSTS, SECONDS)
        for u, b in zip(unbiased, biased):
            assert b.reasoning == u.reasoning
            assert b.probability == pytest.approx(u.probability, abs=1e-6)
            assert b.orders[0] != pytest.approx(u.orders[0], abs=1e-3)  # each order alone is biased
    assert all(v.consistent is False for v in biased)  # a bias of 25: "A" in both orders


def test_without_cot_nothing_is_generated_and_nothing_changes(model, tokenizer, monkeypatch):
    monkeypatch.setattr(judges, "sample", lambda *a, **k: pytest.fail("a judge without cot generated"))
    plain = PairwiseJudge(model, tokenizer)
    assert plain.template == judges.PAIRWISE_TEMPLATE
    verdicts = plain(PROMPTS, FIRSTS, SECONDS)
    assert all(v.reasoning is None and "reasoning" not in v.to_dict() for v in verdicts)
    spec = build_judge({"pairwise": "tiny", "cot": True, "cot_max_new_tokens": 3}, lambda s: (model, tokenizer))
    assert spec.cot and spec.cot_max_new_tokens == 3 and spec.template == COT_TEMPLATE
    with pytest.raises(ConfigError, match="cot_max_new_tokens"):
        PairwiseJudge(model, tokenizer, cot=True, cot_max_new_tokens=0)
    with pytest.raises(ConfigError, match="cot: expected"):
        PairwiseJudge(model, tokenizer, cot="yes")


def test_label_rows_keep_the_reasoning_chosen_first():
    said = ("a shown first", "b shown first")
    kept, _ = pair_rows("p", ["a", "b"], {(0, 1): Verdict(0.8, reasoning=said, principle="x")}, "all", 0.5)
    assert kept[0]["chosen"] == "a" and kept[0]["reasoning"] == list(said) and kept[0]["principle"] == "x"
    kept, _ = pair_rows("p", ["a", "b"], {(0, 1): Verdict(0.2, reasoning=said)}, "all", 0.5)
    assert kept[0]["chosen"] == "b" and kept[0]["reasoning"] == ["b shown first", "a shown first"]
    assert "principle" not in kept[0]
    _, dropped = pair_rows("p", ["a", "b"], {(0, 1): Verdict(0.5, True, reasoning=said)}, "all", 0.5)
    assert dropped[0]["reasoning"] == list(said)
