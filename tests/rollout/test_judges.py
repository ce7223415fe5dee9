"""Judges: verdicts read from label log-probs equal the hand-computed softmax, both orders cancel a position bias,
pointwise and reference-guided judges follow their definitions, specs are checked."""

import math

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model
from posttrain.rollout import chat_prompts
from posttrain.rollout.judge_specs import build_judge
from posttrain.rollout.judges import (
    PAIRWISE_TEMPLATE,
    EnsembleJudge,
    PairwiseJudge,
    PointwiseJudge,
    ReferenceGuidedJudge,
    RewardModelJudge,
    RuleJudge,
    Verdict,
    label_logps,
    majority,
)

PROMPTS = ["What is 2 + 2?", "Name a colour."]
FIRSTS = ["The answer is 4.", "Blue."]
SECONDS = ["It is five, I think, maybe.", "Let me think about colours for a while. Green."]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_tiny_model(seed=3).eval()


def last_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double()


def test_pairwise_verdict_is_the_softmax_over_the_two_label_tokens_in_each_order(model, tokenizer):
    judge = PairwiseJudge(model, tokenizer, batch_size=1)
    a_id, b_id = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in "AB")
    verdicts = judge(PROMPTS, FIRSTS, SECONDS)
    for prompt, first, second, verdict in zip(PROMPTS, FIRSTS, SECONDS, verdicts):
        ids = [chat_prompts(tokenizer, [PAIRWISE_TEMPLATE.format(prompt=prompt, first=x, second=y)])[0]
               for x, y in ((first, second), (second, first))]
        p_first_order = torch.softmax(last_logits(model, ids[0])[[a_id, b_id]], 0)[0].item()
        p_second_order = torch.softmax(last_logits(model, ids[1])[[a_id, b_id]], 0)[1].item()  # "B" = the first
        assert verdict.orders == pytest.approx((p_first_order, p_second_order), abs=1e-5)
        m1, m2 = math.log(p_first_order / (1 - p_first_order)), math.log((1 - p_second_order) / p_second_order)
        assert verdict.probability == pytest.approx(1 / (1 + math.exp(-(m1 - m2) / 2)), abs=1e-5)
        assert verdict.consistent == ((p_first_order > 0.5) == (p_second_order > 0.5))


def test_both_orders_cancel_a_constant_position_bias(model, tokenizer):
    judge = PairwiseJudge(model, tokenizer, batch_size=2)
    unbiased = judge(PROMPTS, FIRSTS, SECONDS)
    a_id = tokenizer("A", add_special_tokens=False)["input_ids"][0]
    head = model.get_output_embeddings()
    for bias in (-6.0, 3.0, 25.0):  # the judge leans towards "A", whatever it reads
        def add_bias(module, inputs, output, bias=bias):
            output = output.clone()
            output[..., a_id] += bias
            return output

        handle = head.register_forward_hook(add_bias)
        biased = judge(PROMPTS, FIRSTS, SECONDS)
        handle.remove()
        for u, b in zip(unbiased, biased):
            assert b.probability == pytest.approx(u.probability, abs=1e-5)
            assert b.orders[0] != pytest.approx(u.orders[0], abs=1e-3)  # each order alone is biased
    strong = [v for v in biased]
    assert all(v.consistent is False for v in strong)  # with a bias of 25 every order says "A": inconsistent


def test_label_logps_of_multi_token_labels_are_whole_replies(model, tokenizer):
    ids = chat_prompts(tokenizer, ["Rate it."])[0]
    labels = ["1", "10", "2"]  # "1" begins "10": each label is followed by the end-of-turn token
    got = label_logps(model, tokenizer, [ids], labels)[0]
    for k, label in enumerate(labels):
        tokens = tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logps = model(torch.tensor([ids + tokens])).logits[0].double().log_softmax(-1)
        expected = sum(logps[len(ids) - 1 + j, t].item() for j, t in enumerate(tokens))
        assert got[k].item() == pytest.approx(expected, abs=1e-4)


def test_pointwise_verdict_is_the_probability_that_one_draw_beats_the_other(model, tokenizer):
    judge = PointwiseJudge(model, tokenizer, criterion="correct", mode="yes_no")
    p_yes = judge.scores(PROMPTS, FIRSTS) + judge.scores(PROMPTS, SECONDS)
    verdicts = judge(PROMPTS, FIRSTS, SECONDS)
    for i, verdict in enumerate(verdicts):
        assert verdict.probability == pytest.approx(0.5 + (p_yes[i] - p_yes[i + 2]) / 2, abs=1e-6)  # batches differ
    scorer = PointwiseJudge(model, tokenizer, mode="score")
    dist = scorer.distributions(PROMPTS, FIRSTS)
    assert dist.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert scorer.scores(PROMPTS, FIRSTS) == pytest.approx((dist * torch.arange(1, 11)).sum(-1).tolist())
    same = scorer(PROMPTS, FIRSTS, FIRSTS)
    assert [v.probability for v in same] == pytest.approx([0.5, 0.5])


def test_reference_guided_judge_prefers_the_agreeing_answer_and_abstains_otherwise(model, tokenizer):
    def parser(text):  # the judge's own samples all parse to 7; candidates carry their answer after "cand:"
        return text[5:].strip() if text.startswith("cand:") else "7"

    judge = ReferenceGuidedJudge(model, tokenizer, parser, samples=3, max_new_tokens=4)
    verdicts = judge(["q"] * 4, ["cand:7", "cand:8", "cand:8", "cand:7"], ["cand:8", "cand:7", "cand:9", "cand: 7"])
    assert [v.preferred for v in verdicts] == [0, 1, None, None]
    assert verdicts[0].probability == 1.0 and verdicts[1].probability == 0.0
    assert [v.abstained for v in verdicts] == [False, False, True, True]
    assert list(judge.references) == ["q"]  # the prompt was answered once, for every pair


def test_majority_vote():
    assert majority([3, 3, None, 4]) == (3, 0.5)
    assert majority([3, 4, None]) == (None, 1 / 3)  # a tie for first: no reference
    assert majority([None, None]) == (None, 0.0)


def test_reward_rule_and_ensemble_judges():
    rm = RewardModelJudge(lambda prompts, responses: [float(len(r)) for r in responses])
    v = rm(["p"], ["abc"], ["a"])[0]
    assert v.probability == pytest.approx(1 / (1 + math.exp(-2.0)))
    rule = RuleJudge(lambda prompts, completions, problems: [float(len(c) < 3) for c in completions])
    assert [x.preferred for x in rule(["p"] * 2, ["ab", "abc"], ["abcd", "abcd"])] == [0, None]
    abstaining = RuleJudge(lambda prompts, completions, problems: [0.0] * len(completions))
    ensemble = EnsembleJudge([(3.0, rm), (1.0, rule), (5.0, abstaining)])
    got = ensemble(["p"], ["ab"], ["abcd"])[0]
    expected = (3 * (1 / (1 + math.exp(2.0))) + 1 * 1.0) / 4  # the abstaining member does not vote
    assert got.probability == pytest.approx(expected) and not got.abstained
    assert Verdict(0.52).preferred == 0 and Verdict(0.5).preferred is None


def test_judge_specs_are_checked_and_built(model, tokenizer):
    with pytest.raises(ConfigError, match="exactly one"):
        build_judge({"pairwise": "tiny", "rule": "arithmetic"})
    with pytest.raises(ConfigError, match="unknown key 'criterion'"):
        build_judge({"pairwise": "tiny", "criterion": "x"})
    with pytest.raises(ConfigError, match=r"judge.ensemble\[1\]"):
        build_judge({"ensemble": [{"rule": "arithmetic"}, {"nothing": 1}]})
    with pytest.raises(ConfigError, match="template"):
        build_judge({"pairwise": "tiny", "template": "no placeholders"}, lambda spec: (model, tokenizer))
    judge = build_judge({"ensemble": [{"rule": "arithmetic", "weight": 2}, {"llm": "tiny", "abstain_band": 0.5}]},
                        lambda spec: (model, tokenizer))
    assert isinstance(judge, EnsembleJudge) and [w for w, _ in judge.members] == [2.0, 1.0]
    from posttrain.tasks import get_task

    problem = get_task("arithmetic").problems("eval", 1)[0]
    right = f"The answer is {problem.answer}."
    verdict = judge([problem.prompt], ["The answer is -1."], [right], [problem])[0]
    assert verdict.preferred == 1  # the LM judge abstains (band 0.5), the checker decides
