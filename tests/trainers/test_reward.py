"""Reward modelling on the tiny model: training raises held-out pair accuracy and margin; scores are read at each
row's last real token; the saved model is a plain transformers model with the same scores; LoRA trains adapters and
the head only; the saved model serves as a GRPO reward function."""

import json
import math

import pytest
import torch

from posttrain.api import train
from posttrain.data import DataConfig, normalize_rows
from posttrain.data.batching import collate_sequences
from posttrain.data.preference import collate_pairs, tokenize_pairs
from posttrain.data.sources import Row
from posttrain.data.tokenize import encode_prompt_completion
from posttrain.errors import DataError
from posttrain.math import bradley_terry_loss, reward_centering_penalty
from posttrain.models.reward_model import load_reward_model, sequence_scores
from posttrain.rollout import build_reward
from posttrain.trainers.reward_model import RewardConfig, RewardModelMethod


def pairs(n, offset=0):
    """Concise, correct answers preferred over rambling, wrong ones (as tests/trainers/test_preference.py)."""
    return [{"prompt": f"What is {i} + {i + 3}?", "chosen": f"The answer is {2 * i + 3}.",
             "rejected": f"Well, let me think about it for a while. Maybe it is {2 * i + 5}, I am not sure."}
            for i in range(offset, offset + n)]


def config(tmp_path, train_path, eval_path, **overrides):
    base = {
        "method": "reward", "model": "tiny", "output_dir": str(tmp_path / "run"), "max_steps": 20, "batch_size": 4,
        "learning_rate": 1e-3, "lr_schedule": "constant", "logging_steps": 5, "progress_bar": False,
        "data": {"path": str(train_path), "eval_path": str(eval_path), "max_length": 96},
    }
    base.update(overrides)
    return base


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write(folder / "train.jsonl", pairs(16)), write(folder / "eval.jsonl", pairs(8, offset=40))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("reward")
    return tmp_path / "run", train(config(tmp_path, *data))


def rows_of(items):
    return normalize_rows([Row(item, f"row{i}") for i, item in enumerate(items)], DataConfig(), ("preference",))[1]


def pair_batch(tokenizer, items, **data_options):
    examples, _ = tokenize_pairs(rows_of(items), tokenizer, DataConfig(max_length=96, **data_options))
    return collate_pairs(examples, tokenizer.pad_token_id)


# ------------------------------------------------------------------------------------------------------- training
def test_training_raises_held_out_accuracy_and_margin(full_run, tmp_path):
    """A random head may rank these pairs either way at step 0 (they differ the same way every time), so the same
    pairs are also trained with chosen and rejected swapped: held-out accuracy starts at a and 1 - a (ties count half),
    so one of the two starts at or below chance, and both end >= 0.9."""
    run, evaluation = full_run
    def swapped(rows):
        return [dict(p, chosen=p["rejected"], rejected=p["chosen"]) for p in rows]

    reversed_run = train(config(tmp_path, write(tmp_path / "train.jsonl", swapped(pairs(16))),
                                write(tmp_path / "eval.jsonl", swapped(pairs(8, offset=40)))))
    for result in (evaluation, reversed_run):
        after, before = result["metrics"], result["baseline"]
        assert after["preference_accuracy"]["value"] >= 0.9
        assert after["reward_margin"]["value"] > before["reward_margin"] + 1.0
        assert after["loss"]["value"] < before["loss"]
    assert min(evaluation["baseline"]["preference_accuracy"], reversed_run["baseline"]["preference_accuracy"]) <= 0.5
    assert evaluation["reward_model"] == str(run / "final")
    log = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    trained = [r for r in log if "loss" in r]
    assert trained[-1]["loss"] < trained[0]["loss"]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert name in trained[0]
    first = trained[0]
    assert first["rewards/margin"] == pytest.approx(first["rewards/chosen"] - first["rewards/rejected"], abs=1e-5)


def test_loss_is_bradley_terry_with_margin_and_centering(tokenizer):
    """The method's summed loss equals the math functions applied to the scores it reads, with a margin column and
    the centering penalty; accuracy counts pairs with r_w > r_l."""
    model, tokenizer = load_reward_model("tiny")
    items = [dict(p, margin=m) for p, m in zip(pairs(3), (0.5, 0.0, 2.0))]
    batch = pair_batch(tokenizer, items)
    assert batch["margin"].tolist() == [0.5, 0.0, 2.0]
    method = RewardModelMethod(RewardConfig(center_rewards_coefficient=0.1))
    out = method.loss(model, batch)
    chosen, rejected = sequence_scores(model, batch).chunk(2)
    expected = bradley_terry_loss(chosen, rejected, batch["margin"]) + 0.1 * reward_centering_penalty(chosen, rejected)
    assert method.count(batch) == 3
    assert out.loss_sum.item() == pytest.approx(expected.sum().item(), rel=1e-5)
    assert out.metrics["rewards/accuracy"] == float((chosen > rejected).sum())


def test_centering_pulls_the_mean_score_to_zero(tmp_path, data):
    """With a strong centering weight the held-out scores' mean (r_w + r_l) / 2 ends nearer 0 than without."""
    runs = {c: train(config(tmp_path, *data, output_dir=str(tmp_path / str(c)), max_steps=10,
                            center_rewards_coefficient=c))["metrics"] for c in (None, 1.0)}

    def offset(m):
        return abs(m["reward_chosen"]["value"] + m["reward_rejected"]["value"]) / 2

    assert offset(runs[1.0]) < offset(runs[None])
    assert offset(runs[1.0]) < 0.5


def test_some_pairs_without_margin_is_an_error(tmp_path, write_jsonl):
    rows = [dict(p, margin=1.0) for p in pairs(3)] + pairs(1, offset=9)
    path = write_jsonl("mixed.jsonl", rows)
    with pytest.raises(DataError, match="margin"):
        train(config(tmp_path, path, path, max_steps=1))


# -------------------------------------------------------------------------------------------------------- scoring
def test_last_token_scoring_with_right_padding_equals_each_sequence_alone():
    model, tokenizer = load_reward_model("tiny")
    model.eval()
    sequences = [([1, 50, 60], [70, 80, 90, 100, 2]), ([1, 55], [65]), ([1, 40, 41, 42], [43, 44])]
    batch = collate_sequences(sequences, tokenizer.pad_token_id)
    assert batch["attention_mask"].sum(-1).tolist() == [8, 3, 6]  # right padded
    with torch.no_grad():
        together = sequence_scores(model, batch)
        alone = torch.cat([sequence_scores(model, collate_sequences([s], tokenizer.pad_token_id)) for s in sequences])
    assert torch.allclose(together, alone, atol=1e-5)
    assert together.unique().numel() == 3  # the head reads different positions, not one shared token


def test_saved_model_reloads_in_transformers_with_equal_scores(full_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run, _ = full_run
    final = run / "final"
    hf_model = AutoModelForSequenceClassification.from_pretrained(str(final)).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(final))
    assert hf_model.config.num_labels == 1
    assert hf_model.config.pad_token_id == hf_tokenizer.pad_token_id != hf_tokenizer.eos_token_id
    ours, tokenizer = load_reward_model(str(final))
    ours.eval()
    batch = pair_batch(tokenizer, pairs(3, offset=60))
    # rows ending with EOS (data without a chat template): transformers must not mistake it for padding
    eos_rows = collate_sequences([([1, 50, 60], [70, 2]), ([1, 55], [65, 66, 67, 68, 2])], tokenizer.pad_token_id)
    with torch.no_grad():
        for b in (batch, eos_rows):
            hf = hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.squeeze(-1)
            assert torch.allclose(sequence_scores(ours, b), hf, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------- LoRA
def test_lora_trains_adapters_and_head_only_and_the_merged_copy_scores_the_same(tmp_path, data):
    from transformers import AutoModelForSequenceClassification

    evaluation = train(config(tmp_path, *data, learning_rate=5e-3, max_steps=20,
                              lora={"enabled": True, "r": 8, "dropout": 0.0, "save_merged": True}))
    assert evaluation["metrics"]["preference_accuracy"]["value"] >= 0.9
    assert evaluation["metrics"]["reward_margin"]["value"] > evaluation["baseline"]["reward_margin"] + 0.5
    final = tmp_path / "run" / "final"
    assert evaluation["reward_model"] == str(final / "merged")

    adapter, tokenizer = load_reward_model(str(final))
    trainable = {n for n, p in load_reward_lora_names(tmp_path)}
    assert trainable and all("lora_" in n or ".score." in n for n in trainable), trainable
    assert any(".score." in n for n in trainable)
    merged = AutoModelForSequenceClassification.from_pretrained(str(final / "merged")).eval()
    adapter.eval()
    batch = pair_batch(tokenizer, pairs(3, offset=60))
    with torch.no_grad():
        hf = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        assert torch.allclose(sequence_scores(adapter, batch), hf, atol=1e-4)


def load_reward_lora_names(tmp_path):
    """The trainable parameters of the LoRA reward model as the trainer builds it."""
    from posttrain.config import build_config
    from posttrain.trainers.common import load_policy

    cfg = build_config(RewardConfig, {"model": "tiny", "output_dir": str(tmp_path / "x"),
                                      "lora": {"enabled": True, "r": 8}})
    model, _ = load_policy(cfg, reward_model=True)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------ as a reward function
def test_reward_model_spec_scores_prompt_and_completion(full_run):
    run, _ = full_run
    reward = build_reward([{"model": str(run / "final"), "weight": 2.0, "options": {"batch_size": 2}}])
    assert reward.labels == [str(run / "final")]
    prompts = [p["prompt"] for p in pairs(3, offset=70)]
    completions = [pairs(1, offset=70)[0]["chosen"], "Well, let me think. Maybe 3.", "The answer is 147."]
    totals, per_function = reward(prompts, completions, [None] * 3)
    model, tokenizer = load_reward_model(str(run / "final"))
    model.eval()
    sequences = [encode_prompt_completion(tokenizer, p, c, True) for p, c in zip(prompts, completions)]
    with torch.no_grad():
        expected = sequence_scores(model, collate_sequences(sequences, tokenizer.pad_token_id))
    assert per_function[str(run / "final")] == pytest.approx(expected.tolist(), abs=1e-5)
    assert totals == pytest.approx([2 * v for v in expected.tolist()], abs=1e-5)
    assert per_function[str(run / "final")][1] < per_function[str(run / "final")][0]  # it learned the preference
    # a sampled completion that training's prefix check would refuse (it merges with the prompt's last newline)
    # is scored as the whole conversation tokenizes
    (value,), _ = reward(prompts[:1], ["\n\nThe answer is 3."], [None])
    assert math.isfinite(value)


def test_grpo_runs_with_a_reward_model_reward(tmp_path, full_run):
    run, _ = full_run
    evaluation = train({
        "method": "grpo", "model": "tiny", "output_dir": str(tmp_path / "grpo"), "task": "arithmetic",
        "num_train_prompts": 8, "num_eval_prompts": 2, "batch_size": 2, "group_size": 2, "max_new_tokens": 4,
        "max_steps": 1, "logging_steps": 1, "progress_bar": False,
        "rewards": [{"model": str(run / "final")}],
    })
    log = [json.loads(line) for line in (tmp_path / "grpo" / "log_history.jsonl").read_text().splitlines()]
    step = next(r for r in log if "reward" in r)
    assert f"reward/{run / 'final'}" in step
    assert evaluation["steps"] == 1


def test_reward_spec_needs_exactly_one_source():
    from posttrain.errors import ConfigError
    from posttrain.rollout import RewardSpec

    with pytest.raises(ConfigError, match="exactly one of"):
        RewardSpec(name="arithmetic", model="runs/reward/final")
    with pytest.raises(ConfigError, match="unknown option"):
        build_reward([{"model": "runs/reward/final", "options": {"temperature": 2}}])
