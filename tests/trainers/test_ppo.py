"""PPO on the tiny model: it raises a rule reward, the four roles update or stay frozen as configured, KL starts
at 0, an interrupted run resumes to the same result, and configs missing a role fail clearly."""

import json

import pytest
import torch

from posttrain.api import train
from posttrain.errors import ConfigError
from posttrain.models.reward_model import load_reward_model
from posttrain.models.saving import save_model

REWARD_MODULE = '''
def starts_a_word(prompts, completions, problems):
    """1 when the completion's first token begins with a space (learnable by a random model in a few steps)."""
    return [float(text.startswith(" ")) for text in completions]
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))


def ppo_config(tmp_path, **overrides):
    base = {
        "method": "ppo", "model": "tiny", "output_dir": str(tmp_path / "run"), "task": "arithmetic",
        "num_train_prompts": 64, "num_eval_prompts": 16, "batch_size": 8, "max_new_tokens": 4, "max_steps": 20,
        "learning_rate": 1e-2, "top_k": 20, "logging_steps": 4, "eval_steps": 20, "progress_bar": False,
        "ppo_epochs": 2, "num_minibatches": 2, "value_init": "policy",
        "rewards": [{"function": "tiny_rewards:starts_a_word"}],
    }
    base.update(overrides)
    return base


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize("overrides", [
    {},
    {"shared_value_head": True, "reward_mode": "dense", "target_kl": 1.0, "kl_estimator": "k3"},
], ids=["value-model", "shared-head-dense-adaptive"])
def test_ppo_raises_the_reward_and_logs_what_it_did(tmp_path, reward_module, overrides):
    evaluation = train(ppo_config(tmp_path, **overrides))
    assert evaluation["baseline"]["reward"] <= 0.25 and evaluation["metrics"]["reward"]["value"] >= 0.75, evaluation
    rollouts = read_jsonl(tmp_path / "run" / "ppo_metrics.jsonl")
    assert [r["step"] for r in rollouts] == [4, 8, 12, 16, 20] and all(r["updates"] == 4 for r in rollouts)
    assert rollouts[0]["kl"] == 0.0 and rollouts[0]["non_score_reward"] == 0.0  # policy == reference before training
    assert max(r["kl"] for r in rollouts) > 0
    for name in ("reward", "reward_with_kl", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "clip_fraction",
                 "value_clip_fraction", "approx_kl", "explained_variance", "advantage_mean", "advantage_std",
                 "completion_length", "generation_s", "training_s"):
        assert name in rollouts[-1] or name == "training_s", name
    assert any(r["clip_fraction"] > 0 for r in rollouts)  # several updates per rollout: clipping really fires
    if "target_kl" in overrides:  # measured KL above the target raises the coefficient
        assert rollouts[-1]["kl_coef"] != rollouts[0]["kl_coef"]
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file()
    assert (final / ("value_head.safetensors" if overrides else "value_model/model.safetensors")).is_file()
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert {s["step"] for s in samples} == {0, 20}


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_each_role_updates_or_stays_frozen(tmp_path, reward_module, lora):
    """Policy and value model train; the reference and the reward model do not; under LoRA only adapters train and
    the reference is the policy with adapters off (no copy)."""
    reward_model, reward_tokenizer = load_reward_model("tiny", seed=1)
    save_model(reward_model, reward_tokenizer, tmp_path / "rm")
    seen = {}

    def capture(engine, state):
        if state["step"] == 1:
            seen["model"], seen["method"] = engine.model, engine.method
            seen["policy"], seen["value"] = snapshot(engine.model.policy), snapshot(engine.model.value_model)
            reference = engine.method.reference.frozen
            seen["reference"] = None if reference is None else (reference, snapshot(reference))
            scorer = engine.method.setup.reward.parts[0].fn
            seen["reward"] = (scorer.model, snapshot(scorer.model))

    config = ppo_config(tmp_path, rewards=[], reward_model=str(tmp_path / "rm"), value_init="reward", max_steps=8,
                        eval_steps=None, num_eval_prompts=2,
                        lora={"enabled": lora, "r": 4, "dropout": 0.0})
    from posttrain.api import build_method_config

    train_function, typed = build_method_config(config)
    train_function(typed, callbacks=[capture])
    policy_changed = changed(seen["policy"], seen["model"].policy)
    assert policy_changed and all(("lora_" in k) == lora for k in policy_changed)
    assert changed(seen["value"], seen["model"].value_model)
    assert not changed(*reversed(seen["reward"]))
    if lora:
        assert seen["reference"] is None
    else:
        assert not changed(*reversed(seen["reference"]))


@pytest.mark.parametrize("save_steps", [4, 3], ids=["at-rollout-end", "mid-rollout"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, reward_module, save_steps):
    """A rollout trains over 4 steps here; a checkpoint inside it carries the rollout and the updates left."""
    settings = dict(max_steps=8, eval_steps=None, num_eval_prompts=2, logging_steps=1, save_steps=save_steps,
                    target_kl=0.5, save_total_limit=None)
    train(ppo_config(tmp_path / "whole", **settings))

    def stop_at_6(engine, state):
        if state["step"] == 6:
            raise KeyboardInterrupt

    from posttrain.api import build_method_config

    train_function, typed = build_method_config(ppo_config(tmp_path / "cut", **settings))
    with pytest.raises(KeyboardInterrupt):
        train_function(typed, callbacks=[stop_at_6])
    train(ppo_config(tmp_path / "cut", **settings))
    whole = read_jsonl(tmp_path / "whole" / "run" / "ppo_metrics.jsonl")
    resumed = read_jsonl(tmp_path / "cut" / "run" / "ppo_metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [4, 8]
    for cut, full in zip(resumed, whole):  # the same rollouts and updates (timings aside); kl_coef restored
        for name in ("reward", "kl", "kl_coef", "policy_loss", "value_loss", "approx_kl", "explained_variance"):
            assert cut[name] == pytest.approx(full[name], rel=1e-4, abs=1e-6), name


def test_configs_missing_a_role_fail_clearly(tmp_path, reward_module, write_jsonl):
    with pytest.raises(ConfigError, match="value_init=reward"):
        train(ppo_config(tmp_path, value_init="reward"))
    prompts = write_jsonl("prompts.jsonl", [{"prompt": "Say hi."}])
    with pytest.raises(ConfigError, match="PPO needs a reward"):
        train(ppo_config(tmp_path, rewards=[], task="", data={"path": str(prompts)}))


def test_a_value_model_with_another_tokenizer_is_refused(tmp_path, reward_module):
    model, tokenizer = load_reward_model("tiny")
    tokenizer.add_tokens(["<a-token-the-policy-lacks>"])
    save_model(model, tokenizer, tmp_path / "other")
    with pytest.raises(ConfigError, match="another tokenizer"):
        train(ppo_config(tmp_path, value_model=str(tmp_path / "other")))


def test_old_spellings_of_beta_and_epsilon_still_load_with_a_warning():
    """PPO's kl_coef / cliprange and GRPO's epsilon_low are the same quantities as beta / epsilon everywhere else."""
    from posttrain.api import build_method_config

    with pytest.warns(FutureWarning, match="'kl_coef' is deprecated; use 'beta'"):
        _, ppo = build_method_config({"method": "ppo", "kl_coef": 0.1, "cliprange": 0.3})
    assert (ppo.beta, ppo.epsilon) == (0.1, 0.3)
    with pytest.warns(FutureWarning, match="'epsilon_low' is deprecated; use 'epsilon'"):
        _, grpo = build_method_config({"method": "grpo", "epsilon_low": 0.25})
    assert grpo.epsilon == 0.25
    with pytest.raises(ConfigError, match="kl_coef"):
        build_method_config({"method": "ppo", "kl_coef": 0.1, "beta": 0.2})
