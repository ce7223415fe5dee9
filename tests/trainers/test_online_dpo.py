"""Online DPO: its loss equals the DPO trainer's on the same pair, the judge's preferred completion becomes the chosen
row, and on the tiny model a rule judge's preferred property becomes more frequent."""

import json

import pytest
import torch

from posttrain.api import train
from posttrain.data.batching import collate_sequences
from posttrain.data.preference import PairExample, collate_pairs_packed
from posttrain.models import build_tiny_model
from posttrain.rollout.judges import Verdict
from posttrain.trainers.dpo import DPOConfig, PreferenceMethod
from posttrain.trainers.online_dpo import OnlineDPOConfig, OnlineDPOMethod, preference_order
from posttrain.trainers.reference import ReferencePolicy

RULES = '''
def starts_a_word(prompts, completions, problems):
    """1 when the completion begins with a space (what a random tiny model can learn in a few dozen steps)."""
    return [float(text.startswith(" ")) for text in completions]
'''


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_equals_dpo_on_the_same_pairs(tmp_path, loss_type):
    model = build_tiny_model(seed=1)
    reference = ReferencePolicy(model)  # a frozen copy; then move the policy away from it, so that h != 0
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(5)) * 0.02)
    pairs = [PairExample([5, 6, 7], [8, 9, 10, 11], [12, 13]), PairExample([20, 21], [22], [23, 24, 25])]
    dpo = PreferenceMethod(DPOConfig(beta=0.3, loss_type=loss_type, output_dir=str(tmp_path)), reference)
    expected = dpo.loss(model, collate_pairs_packed(pairs, 0))

    online = OnlineDPOMethod.__new__(OnlineDPOMethod)
    online.config = OnlineDPOConfig(beta=0.3, loss_type=loss_type, temperature=1.0, output_dir=str(tmp_path))
    rows = collate_sequences([(p.prompt_ids, p.chosen_ids) for p in pairs] +
                             [(p.prompt_ids, p.rejected_ids) for p in pairs], 0)
    rows["ref_token_logps"] = reference.token_logps(model, rows)
    got = online.loss(model, rows)
    assert online.count(rows) == 2
    assert float(got.loss_sum.detach()) == pytest.approx(float(expected.loss_sum.detach()), rel=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "logps/chosen", "logps/rejected"):
        assert got.metrics[name] == pytest.approx(expected.metrics[name], rel=1e-4, abs=1e-6), name
    # and by hand: -log sigma(beta h) from summed log-probs
    if loss_type == "sigmoid":
        def summed(net, prompt, completion):
            with torch.no_grad():
                logps = net(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
            return sum(logps[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion))

        total = 0.0
        for p in pairs:
            h = (summed(model, p.prompt_ids, p.chosen_ids) - summed(reference.frozen, p.prompt_ids, p.chosen_ids)) - (
                summed(model, p.prompt_ids, p.rejected_ids) - summed(reference.frozen, p.prompt_ids, p.rejected_ids))
            total += -torch.nn.functional.logsigmoid(torch.tensor(0.3 * h)).item()
        assert float(got.loss_sum.detach()) == pytest.approx(total, rel=1e-4)


def test_preference_order_puts_the_judged_better_row_first():
    chosen, rejected = preference_order([True, None, False])
    assert chosen.tolist() == [0, 5] and rejected.tolist() == [1, 4]


def test_prepare_step_labels_with_the_judge(tmp_path, tokenizer, monkeypatch):
    from posttrain.trainers.rl import load_online_rl

    config = OnlineDPOConfig(model="tiny", output_dir=str(tmp_path), num_train_prompts=4, num_eval_prompts=1,
                             max_new_tokens=5)
    model, tokenizer, setup = load_online_rl(config)
    seen = []

    def judge(prompts, firsts, seconds, problems):  # the longer text wins; equal lengths abstain
        seen.extend(zip(firsts, seconds))
        return [Verdict(0.5, True) if len(a) == len(b) else Verdict(float(len(a) > len(b))) for a, b in
                zip(firsts, seconds)]

    method = OnlineDPOMethod(config, tokenizer, setup, ReferencePolicy(model), judge)
    batches = [{"example_index": torch.tensor([0, 1])}, {"example_index": torch.tensor([2, 3])}]
    method.prepare_step(model, batches, 0)
    decided = [(a, b) for a, b in seen if len(a) != len(b)]
    assert sum(method.count(b) for b in batches) == len(decided)
    assert method.rollout_metrics["labelled_fraction"] == len(decided) / 4
    for batch in batches:
        if method.count(batch):
            lengths = batch["loss_mask"].sum(-1)
            chosen, rejected = lengths.chunk(2)
            assert torch.all(chosen >= rejected)  # more text, at least as many tokens


def test_online_dpo_raises_the_rate_of_the_judges_preferred_property(tmp_path, monkeypatch):
    (tmp_path / "tiny_rules.py").write_text(RULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    evaluation = train({
        "method": "online_dpo", "model": "tiny", "output_dir": str(tmp_path / "run"), "task": "arithmetic",
        "num_train_prompts": 64, "num_eval_prompts": 8, "batch_size": 8, "max_new_tokens": 4, "max_steps": 20,
        "learning_rate": 1e-2, "top_k": 20, "logging_steps": 5, "eval_steps": 20, "progress_bar": False,
        "judge": {"rule": "tiny_rules:starts_a_word"}, "rewards": [{"function": "tiny_rules:starts_a_word"}],
    })
    log = [json.loads(line) for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    rates = [r["reward"] for r in log if "reward" in r]  # the share of sampled completions that start a word
    assert len(rates) == 4 and rates[-1] > rates[0] + 0.1, rates
    assert evaluation["metrics"]["reward"]["value"] > evaluation["baseline"]["reward"]
    step = next(r for r in log if "reward" in r)
    for name in ("rewards/margin", "rewards/accuracy", "labelled_fraction", "completion_length"):
        assert name in step, name
