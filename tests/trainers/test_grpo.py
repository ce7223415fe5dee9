"""GRPO / RLOO / REINFORCE: the policy-gradient math by hand, loss invariance to batch splitting, and learning on
the tiny model with a reward it can move."""

import json

import pytest
import torch

from posttrain.api import train
from posttrain.data.batching import collate_sequences
from posttrain.math import group_advantages
from posttrain.math.advantages import leave_one_out_advantages, moving_average
from posttrain.math.policy import aggregated_loss_sum, loss_normaliser
from posttrain.models import build_tiny_model
from posttrain.trainers.grpo import GRPOConfig, PolicyGradientMethod

REWARD_MODULE = '''
def starts_a_word(prompts, completions, problems):
    """1 when the completion's first token begins with a space. A random model's first token follows the same
    template tokens for every prompt, so it can learn this within a few dozen steps (rewards on rarer token classes
    take a 49k-token uniform policy far longer to move)."""
    return [float(text.startswith(" ")) for text in completions]
'''


def test_group_advantages_hand_computed():
    """[1, 2, 3]: mean 2, population std sqrt(2/3) = 0.8165 -> (-1, 0, 1) / 0.8165 = (-1.2247, 0, 1.2247).
    Equal rewards give zeros (no signal), not NaN."""
    out = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), 3)  # eps 1e-4 in the denominator
    assert out.tolist() == pytest.approx([-1.2247, 0.0, 1.2247, 0.0, 0.0, 0.0], abs=2e-4)


def test_leave_one_out_hand_computed():
    """Group (1, 2, 6): baselines are means of the others (4, 3.5, 1.5), advantages (-3, -1.5, 4.5)
    = 3/2 (r - 3)."""
    assert leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0]), 3).tolist() == [-3.0, -1.5, 4.5]
    with pytest.raises(ValueError):
        leave_one_out_advantages(torch.tensor([1.0, 2.0]), 1)


def test_moving_average_baseline():
    assert moving_average(None, 2.0, 0.9) == 2.0
    assert moving_average(2.0, 1.0, 0.9) == pytest.approx(1.9)


def test_loss_aggregations_hand_computed():
    """Token losses (1, 2, 3 | 4, pad, pad), lengths 3 and 1, L = 4.
    grpo: (6/3 + 4/1) / 2 sequences = 3;  token: (6 + 4) / 4 tokens = 2.5;  dr_grpo: 10 / (2 x 4) = 1.25."""
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    expected = {"grpo": 3.0, "token": 2.5, "dr_grpo": 1.25}
    for aggregation, value in expected.items():
        total = aggregated_loss_sum(losses, mask, aggregation) / loss_normaliser(mask, aggregation, 4)
        assert total.item() == pytest.approx(value)


@pytest.mark.parametrize("aggregation", ["grpo", "token", "dr_grpo"])
def test_loss_does_not_depend_on_how_the_rollout_batch_is_split(aggregation, tokenizer):
    """The engine divides each micro-batch's summed loss by the whole step's count: splitting 6 rows as 6, 3+3 or
    1+5 gives the same loss and the same gradient."""
    model = build_tiny_model(seed=1)
    g = torch.Generator().manual_seed(0)
    sequences = [(torch.randint(3, 500, (4 + i % 3,), generator=g).tolist(),
                  torch.randint(3, 500, (2 + (i * 5) % 7,), generator=g).tolist()) for i in range(6)]
    rows = collate_sequences(sequences, tokenizer.pad_token_id)
    rows["advantages"] = torch.randn(6, generator=g)
    rows["old_token_logps"] = torch.randn(6, rows["input_ids"].shape[1] - 1, generator=g) * 0.1 - 5.0
    config = GRPOConfig(loss_aggregation=aggregation, max_new_tokens=8, epsilon=0.2)
    method = PolicyGradientMethod(config, tokenizer, None, None)

    def loss_and_grad(splits):
        model.zero_grad()
        parts = [{k: v[s] for k, v in rows.items()} for s in splits]
        total_items = sum(method.count(p) for p in parts)
        total = 0.0
        for part in parts:
            loss = method.loss(model, part).loss_sum / total_items
            loss.backward()
            total += loss.item()
        return total, model.model.layers[0].mlp.up_proj.weight.grad.clone()

    whole, whole_grad = loss_and_grad([slice(0, 6)])
    for splits in ([slice(0, 3), slice(3, 6)], [slice(0, 1), slice(1, 6)]):
        value, grad = loss_and_grad(splits)
        assert value == pytest.approx(whole, rel=1e-5, abs=1e-7)
        assert torch.allclose(grad, whole_grad, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["grpo", "token", "dr_grpo"])
def test_groups_scored_with_their_prompt_once_give_the_padded_loss_and_gradient(aggregation, tokenizer):
    """pack_groups: 2 prompts x 3 completions, each prompt run once (branches under a 4D mask) instead of once per
    row; the loss, the metrics and the gradient are those of the padded rows."""
    model = build_tiny_model(seed=1)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (6, 4)]
    sequences = [(prompts[i // 3], torch.randint(3, 500, (2 + (i * 5) % 7,), generator=g).tolist()) for i in range(6)]
    rows = collate_sequences(sequences, tokenizer.pad_token_id)
    rows["advantages"] = torch.randn(6, generator=g)
    rows["old_token_logps"] = torch.randn(6, rows["input_ids"].shape[1] - 1, generator=g) * 0.1 - 5.0
    rows["prompt_index"] = torch.tensor([0, 0, 0, 1, 1, 1])
    rows["prompt_length"] = torch.tensor([6, 6, 6, 4, 4, 4])
    config = GRPOConfig(loss_aggregation=aggregation, max_new_tokens=8, epsilon=0.2)
    method = PolicyGradientMethod(config, tokenizer, None, None)
    packed = method.model_batch(rows)
    assert "packed_input_ids" in packed and packed["packed_input_ids"].numel() < rows["input_ids"].numel()

    def loss_and_grad(batch):
        model.zero_grad()
        method.stats = {}
        loss = method.loss(model, batch).loss_sum / method.count(batch)
        loss.backward()
        return loss.item(), dict(method.stats), {n: p.grad.clone() for n, p in model.named_parameters()}

    padded_loss, padded_stats, padded_grads = loss_and_grad(rows)
    packed_loss, packed_stats, packed_grads = loss_and_grad(packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5, abs=1e-7)
    assert packed_stats == pytest.approx(padded_stats, rel=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def rl_config(tmp_path, **overrides):
    base = {
        "method": "grpo", "model": "tiny", "output_dir": str(tmp_path / "run"), "task": "arithmetic",
        "num_train_prompts": 64, "num_eval_prompts": 8, "batch_size": 2, "group_size": 8, "max_new_tokens": 4,
        "max_steps": 20, "learning_rate": 1e-2, "top_k": 20, "logging_steps": 5, "eval_steps": 20, "progress_bar": False,
        "rewards": [{"function": "tiny_rewards:starts_a_word"}],
    }
    base.update(overrides)
    return base


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))


def rewards_over_training(tmp_path) -> list[float]:
    log = [json.loads(line) for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    return [r["reward"] for r in log if "reward" in r]


@pytest.mark.parametrize("overrides", [
    {"method": "grpo"},
    {"method": "grpo", "beta": 0.04, "loss_aggregation": "token", "num_iterations": 2},
    {"method": "grpo", "precision": "bf16"},  # bf16 autocast in training, bf16 rollouts
    {"method": "rloo", "beta": 0.01},
    {"method": "reinforce", "group_size": 4, "batch_size": 4},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_each_method_raises_the_mean_reward(tmp_path, reward_module, overrides):
    evaluation = train(rl_config(tmp_path, **overrides))
    rewards = rewards_over_training(tmp_path)
    assert len(rewards) == 4
    assert rewards[-1] > rewards[0] + 0.1 and rewards[-1] >= 0.9, rewards  # windows of 5 steps
    assert evaluation["metrics"]["reward"]["value"] > evaluation["baseline"]["reward"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    step = next(r for r in log if "reward" in r)
    for name in ("reward_std", "reward/tiny_rewards:starts_a_word", "entropy", "clip_fraction_low",
                 "completion_length", "completion_length_max", "truncated_fraction", "zero_variance_groups",
                 "generation_s", "training_s", "generation_tokens_per_s", "training_tokens_per_s"):
        assert name in step, name
    assert ("kl" in step) == (overrides["method"] == "grpo" and "beta" in overrides)
    samples = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert {json.loads(s)["step"] for s in samples} == {0, 20}


def test_grpo_batch_split_gives_the_same_run(tmp_path, reward_module):
    """1 x 4 prompts and 2 x 2 prompts per step: same rollouts (per-row seeds), same loss, same weights."""
    first = train(rl_config(tmp_path / "a", batch_size=4, max_steps=3, eval_steps=None, num_eval_prompts=2,
                            logging_steps=1))
    second = train(rl_config(tmp_path / "b", batch_size=2, grad_accum_steps=2, max_steps=3, eval_steps=None,
                             num_eval_prompts=2, logging_steps=1))
    log_a = [json.loads(x) for x in (tmp_path / "a" / "run" / "log_history.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "run" / "log_history.jsonl").read_text().splitlines()]
    losses_a = [r["loss"] for r in log_a if "loss" in r]
    losses_b = [r["loss"] for r in log_b if "loss" in r]
    assert losses_a == pytest.approx(losses_b, rel=1e-4, abs=1e-6)
    assert first["metrics"]["reward"]["value"] == pytest.approx(second["metrics"]["reward"]["value"])


@pytest.mark.parametrize("overrides", [{}, {"beta": 0.04, "num_iterations": 2}], ids=["plain", "kl-mu2"])
def test_packed_and_padded_groups_give_the_same_run(tmp_path, reward_module, overrides):
    """pack_groups on and off: the same rollouts, losses and rewards step by step, over 2 micro-batches; with a
    reference model and mu = 2, pi_ref and pi_old are scored packed too."""
    logs = []
    for name, pack in (("packed", True), ("padded", False)):
        train(rl_config(tmp_path / name, batch_size=2, group_size=3, grad_accum_steps=2, max_steps=3,
                        eval_steps=None, num_eval_prompts=2, logging_steps=1, pack_groups=pack, **overrides))
        logs.append([json.loads(x) for x in (tmp_path / name / "run" / "log_history.jsonl").read_text().splitlines()])
    for packed, padded in zip(*logs, strict=True):
        for key in ("loss", "reward", "completion_length", "entropy", "kl", "kl_sequence", "clip_fraction_low"):
            if key in padded:
                assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-6), key


def test_skipping_zero_variance_groups_is_counted(tmp_path, reward_module):
    (tmp_path / "const_rewards.py").write_text("def one(prompts, completions, problems):\n"
                                               "    return [1.0] * len(completions)\n")
    train(rl_config(tmp_path, max_steps=2, eval_steps=None, logging_steps=1, skip_zero_variance_groups=True,
                    rewards=[{"function": "const_rewards:one"}]))
    log = [json.loads(x) for x in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    steps = [r for r in log if "reward" in r]
    assert all(r["zero_variance_groups"] == 1.0 and r["empty_steps"] == 1 for r in steps)


def test_group_methods_need_groups(tmp_path, reward_module):
    from posttrain.errors import ConfigError

    with pytest.raises(ConfigError, match="group_size >= 2"):
        train(rl_config(tmp_path, group_size=1))


@pytest.mark.parametrize("overrides, expected", [
    ({}, None), ({"rollout_dtype": "bfloat16"}, "bfloat16"), ({"precision": "bf16"}, None),
], ids=["default", "bf16-rollouts", "bf16-training"])
def test_rollout_dtype_reaches_the_sampler(tmp_path, reward_module, monkeypatch, overrides, expected):
    """Training rollouts take ``rollout_dtype``; under precision=bf16 ``auto`` leaves it to the autocast around the
    rollout (tests/rollout/test_dtype.py), so the sampler is asked for no dtype but runs inside bf16 autocast."""
    from posttrain.trainers import rl as rl_module

    seen = []
    original = rl_module.sample

    def spy(model, tokenizer, prompt_ids, params, **kwargs):
        if params.temperature > 0:  # a training rollout (held-out evaluation is greedy)
            seen.append((params.dtype, torch.is_autocast_enabled("cpu")))
        return original(model, tokenizer, prompt_ids, params, **kwargs)

    monkeypatch.setattr(rl_module, "sample", spy)
    train(rl_config(tmp_path, max_steps=1, eval_steps=None, num_eval_prompts=2, **overrides))
    assert seen == [(expected, overrides.get("precision") == "bf16")]


@pytest.mark.parametrize("overrides", [
    {"method": "grpo", "beta": 0.05},  # a reference policy and its KL in the loss
    {"method": "reinforce", "group_size": 2},  # the moving-average baseline is method state: saved and restored
    {"method": "grpo", "num_iterations": 2},  # the checkpoint of step 3 falls mid-cycle: its rollout is saved
], ids=["grpo-kl", "reinforce-baseline", "grpo-mu2-mid-cycle"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, reward_module, overrides):
    settings = dict(max_steps=6, eval_steps=None, num_eval_prompts=2, logging_steps=1, save_steps=3,
                    save_total_limit=None, **overrides)
    train(rl_config(tmp_path / "whole", **settings))

    def stop_at_5(engine, state):
        if state["step"] == 5:
            raise KeyboardInterrupt

    from posttrain.api import build_method_config

    train_function, typed = build_method_config(rl_config(tmp_path / "cut", **settings))
    with pytest.raises(KeyboardInterrupt):
        train_function(typed, callbacks=[stop_at_5])
    train(rl_config(tmp_path / "cut", **settings))

    def steps(run):
        return [json.loads(x) for x in (run / "run" / "log_history.jsonl").read_text().splitlines() if "loss" in x]

    whole, resumed = steps(tmp_path / "whole"), steps(tmp_path / "cut")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [1, 2, 3, 4, 5, 6]
    for cut, full in zip(resumed, whole):  # the same rollouts, rewards and updates; timings aside
        for name in ("loss", "grad_norm", "reward", "completion_length"):
            assert cut[name] == full[name], (cut["step"], name)
