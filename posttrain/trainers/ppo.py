"""PPO RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022): a policy trained against a reward with a
per-token KL penalty to a frozen reference, and a learned value function for GAE.

Four roles: the policy (trained), the reference (frozen: a copy, or under LoRA the policy with adapters off), the
reward (a reward model and/or rule rewards, frozen) and the critic (a value model started from the reward model or
the policy, or a value head on the policy's decoder; trained with the policy, one optimizer).

Algorithm, for each rollout of B = batch_size x grad_accum_steps prompts:
    1. sample one completion y ~ pi_old(. | x) per prompt                       (posttrain.rollout)
    2. score s(x, y): the rewards; optionally - penalty without EOS, whitened, clipped
    3. no grad: log pi_old, log pi_ref and V_old at every completion token
    4. r_t = s on the last token (sparse) or s / |y| on each (dense) - kl_coef * kl_t    (posttrain.math.rlhf)
    5. A_t, R_t = GAE(r, V_old; gamma, lambda) (posttrain.math.token_gae); A whitened over the rollout
    6. for each of ppo_epochs: shuffle the rollout into num_minibatches minibatches; each is one optimizer step of
         L = mean_t [ -min(rho_t A_t, clip(rho_t, 1 +- eps) A_t) + vf_coef * max((V - R)^2, (V_clip - R)^2) / 2
                      - entropy_coef * H_t ]                                    (token mean over the minibatch)
       and the epochs stop early when the approximate KL to pi_old exceeds kl_stop
    7. adapt kl_coef toward target_kl (Ziegler et al. 2019)
One engine step is one minibatch update, so max_steps = rollouts x ppo_epochs x num_minibatches; a step that starts a
rollout takes its prompts, the steps that reuse it ignore theirs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from posttrain.engine.checkpoint import load_model_weights
from posttrain.config import config_to_dict
from posttrain.data.preference import collate_sequences
from posttrain.engine import Engine, LossOutput
from posttrain.errors import ConfigError
from posttrain.io import atomic_dir, atomic_write_text
from posttrain.math import (
    adaptive_kl_coef,
    approximate_kl,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    token_gae,
    token_level_scores,
    whiten,
)
from posttrain.models.forward import causal_lm, hidden_states, logps_from_hidden
from posttrain.models.lora import is_peft_model
from posttrain.models.reward import RewardModelScorer, load_reward_model
from posttrain.models.saving import save_model
from posttrain.rollout import chat_prompts, sample
from posttrain.tasks.rewards import build_reward
from posttrain.trainers.common import load_policy, log_trainable, write_evaluation
from posttrain.trainers.reference import ReferencePolicy
from posttrain.trainers.rl import (
    OnlineRLConfig,
    PromptExample,
    greedy_evaluation,
    load_problems,
    prompt_batch,
    rl_evaluation,
    rollout_params,
)

log = logging.getLogger(__name__)


@dataclass
class PPOConfig(OnlineRLConfig):
    method: Literal["ppo"] = "ppo"
    reward_model: str | None = None  # a reward model folder (a reward run's final/), added to `rewards` at weight 1
    value_model: str | None = None  # a folder to start the critic from; None: value_init decides
    value_init: Literal["reward", "policy"] = "reward"  # the reward model's weights, or the policy's (new head)
    shared_value_head: bool = False  # a value head on the policy's decoder instead of a separate value model
    batch_size: int = field(default=8, metadata={"min": 1})  # prompts per micro-batch of a rollout
    ppo_epochs: int = field(default=4, metadata={"min": 1})
    num_minibatches: int = field(default=1, metadata={"min": 1})
    gamma: float = field(default=1.0, metadata={"min": 0, "max": 1})
    gae_lambda: float = field(default=0.95, metadata={"min": 0, "max": 1})
    cliprange: float = field(default=0.2, metadata={"min": 0})
    cliprange_value: float | None = field(default=0.2, metadata={"min": 0})  # None: unclipped value loss
    vf_coef: float = field(default=0.1, metadata={"min": 0})
    value_learning_rate: float | None = field(default=None, metadata={"min": 0})  # the critic's own; None: learning_rate
    entropy_coef: float = field(default=0.0, metadata={"min": 0})
    kl_coef: float = field(default=0.05, metadata={"min": 0})  # beta of r_t = s_t - beta kl_t (initial, if adaptive)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    target_kl: float | None = field(default=None, metadata={"min": 0})  # adaptive KL control toward this sequence KL
    kl_horizon: float = field(default=10000.0, metadata={"min": 1})
    kl_stop: float | None = field(default=None, metadata={"min": 0})  # stop a rollout's epochs above this approx KL
    reward_mode: Literal["sparse", "dense"] = "sparse"
    missing_eos_penalty: float | None = field(default=None, metadata={"min": 0})  # subtracted from s without EOS
    whiten_rewards: bool = False  # scale the rollout's scores to unit variance (their mean kept)
    reward_clip: float | None = field(default=None, metadata={"min": 0})  # s clipped to [-c, c]
    learning_rate: float = field(default=3e-6, metadata={"min": 0})
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    logging_steps: int = field(default=1, metadata={"min": 1})


class PolicyAndValue(torch.nn.Module):
    """The engine's one trainable module: the policy and its critic (a value model, or a value head on the policy).

    ``forward(batch)`` gives, on the shifted token grid ``(B, T-1)`` (position t scores token t+1 and values the
    state before it), the policy's token log-probs (and entropy), the values V(s_t), and the completion mask."""

    def __init__(self, policy, value_model=None, value_head: torch.nn.Linear | None = None):
        super().__init__()
        self.policy, self.value_model, self.value_head = policy, value_model, value_head

    def forward(self, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False):
        hidden = hidden_states(self.policy, batch)
        stats, mask = logps_from_hidden(self.policy, hidden, batch, with_entropy=with_entropy, temperature=temperature)
        if self.value_head is None:
            hidden, head = hidden_states(self.value_model, batch), causal_lm(self.value_model).score
        else:
            head = self.value_head
        values = head(hidden[:, :-1]).squeeze(-1).float()
        return stats, values * mask, mask

    def save(self, directory: Path, tokenizer, base_spec: str, save_merged: bool = False) -> None:
        """The policy as ``final/`` is saved (loadable by transformers / peft), the critic beside it."""
        save_model(self.policy, tokenizer, directory, save_merged=save_merged, base_spec=base_spec)
        if self.value_head is not None:
            save_file({k: v.detach().contiguous() for k, v in self.value_head.state_dict().items()},
                      Path(directory) / "value_head.safetensors")
        else:  # a sequence-scoring model: `value_model: <this folder>` starts a later run from it
            save_model(self.value_model, tokenizer, Path(directory) / "value_model")

    def load(self, directory: Path) -> None:
        load_model_weights(self.policy, directory)
        if self.value_head is not None:
            self.value_head.load_state_dict(load_file(Path(directory) / "value_head.safetensors"))
        else:
            load_model_weights(self.value_model, Path(directory) / "value_model")


class PPOMethod:
    """Rollout, rewards and GAE in ``prepare_step`` (every ppo_epochs x num_minibatches steps); the clipped policy
    and value losses of one minibatch in ``loss``."""

    collate = staticmethod(prompt_batch)

    def __init__(self, config: PPOConfig, tokenizer, train_problems, eval_problems, reward, task, reference):
        self.config, self.tokenizer, self.reward, self.task, self.reference = config, tokenizer, reward, task, reference
        self.train_problems, self.eval_problems = train_problems, eval_problems
        self.sampling = rollout_params(config)
        self.kl_coef = config.kl_coef
        self.rollout_rows: dict[str, torch.Tensor] | None = None
        self.schedule: list[torch.Tensor] = []  # the minibatch row indices still to train on, in order
        self.engine: Engine | None = None
        self.stats: dict[str, float] = {}
        self.rollout_stats: dict[str, float] = {}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["loss_mask"][:, 1:].sum()) if "loss_mask" in batch else 0

    def learning_rates(self, model) -> dict[int, float]:
        """The critic's parameters at value_learning_rate (a new value head needs a far larger step than the
        policy's fine-tuning rate to become a useful baseline within a few rollouts)."""
        if self.config.value_learning_rate is None:
            return {}
        critic = model.value_head if model.value_head is not None else model.value_model
        return {id(p): self.config.value_learning_rate for p in critic.parameters()}

    # --------------------------------------------------------------------------------- steps 1-5: the rollout
    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        if self.rollout_rows is None:
            self.restore_state()
        if not self.schedule:
            self.rollout(model, torch.cat([b["example_index"] for b in micro_batches]))
        rows = self.schedule.pop(0)
        for batch, chunk in zip(micro_batches, rows.tensor_split(len(micro_batches))):
            batch.clear()
            if len(chunk):
                batch.update({k: v[chunk] for k, v in self.rollout_rows.items()})
        self.train_started = time.perf_counter()

    @torch.no_grad()
    def rollout(self, model, example_index: torch.Tensor) -> None:
        config, policy = self.config, model.policy
        problems = [self.train_problems[i] for i in example_index.tolist()]
        step = self.engine.state["step"] if self.engine else 0
        policy.eval()
        self.sampling.seed = config.seed * 1_000_003 + step
        rollout = sample(policy, self.tokenizer, [self.prompt_ids[i] for i in example_index.tolist()], self.sampling)
        policy.train()
        raw_scores, per_function = self.reward([p.prompt for p in problems], rollout.texts, problems)
        scores = self.shaped_scores(torch.tensor(raw_scores), rollout.truncated)

        lengths = rollout.completion_mask.sum(-1)
        sequences = [(rollout.prompt_ids[i], rollout.completion_ids[i, : lengths[i]].tolist()) for i in range(len(scores))]
        device = next(model.parameters()).device
        rows = {k: v.to(device) for k, v in collate_sequences(sequences, self.tokenizer.pad_token_id).items()}
        old, old_values, mask = model(rows, config.temperature)
        ref_logps = self.reference.token_logps(policy, rows, config.temperature) if self.reference else old.logps
        token_scores = token_level_scores(scores.to(device), mask, config.reward_mode)
        rewards, kl = kl_penalized_rewards(token_scores, old.logps, ref_logps, mask, self.kl_coef, config.kl_estimator)
        advantages, returns = token_gae(rewards, old_values, mask, config.gamma, config.gae_lambda)
        rows.update(old_logps=old.logps, old_values=old_values, returns=returns, advantages=whiten(advantages, mask))
        self.rollout_rows = rows

        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        self.schedule = [minibatch.to(device) for _ in range(config.ppo_epochs)
                         for minibatch in torch.randperm(len(scores), generator=generator).tensor_split(
                             config.num_minibatches)]
        sequence_kl = masked_sum(kl, mask, -1)
        self.rollout_stats = {
            "reward": float(torch.tensor(raw_scores).mean()), "reward_std": float(torch.tensor(raw_scores).std(unbiased=False)),
            **{f"reward/{name}": sum(v) / len(v) for name, v in per_function.items()},
            "score": float(scores.mean()), "reward_with_kl": float(masked_sum(rewards, mask, -1).mean()),
            "non_score_reward": float(-self.kl_coef * sequence_kl.mean()), "kl": float(sequence_kl.mean()),
            "kl_coef": self.kl_coef, "advantage_mean": float(masked_mean(advantages, mask)),
            "advantage_std": float(masked_mean((advantages - masked_mean(advantages, mask)) ** 2, mask).sqrt()),
            "value_mean": float(masked_mean(old_values, mask)), "return_mean": float(masked_mean(returns, mask)),
            "explained_variance": explained_variance(old_values, returns, mask),
            "completion_length": float(lengths.float().mean()), "completion_length_max": float(lengths.max()),
            "truncated_fraction": float(rollout.truncated.float().mean()), "generation_s": rollout.generation_time_s,
            "generation_tokens_per_s": rollout.num_generated_tokens / max(rollout.generation_time_s, 1e-9),
        }
        self.cycle = {"updates": 0, "early_stopped": 0}

    def shaped_scores(self, scores: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
        """Step 2's optional shaping of the sequence scores s, in this order: EOS penalty, whitening, clipping."""
        config = self.config
        if config.missing_eos_penalty is not None:
            scores = scores - config.missing_eos_penalty * truncated.float()
        if config.whiten_rewards and len(scores) > 1:
            scores = whiten(scores, shift_mean=False)
        if config.reward_clip is not None:
            scores = scores.clamp(-config.reward_clip, config.reward_clip)
        return scores

    # ------------------------------------------------------------------------------- step 6: one minibatch
    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        config = self.config
        stats, values, mask = model(batch, config.temperature, with_entropy=True)
        policy = clipped_policy_loss(stats.logps, batch["old_logps"], batch["advantages"], config.cliprange)
        value_loss, value_clipped = clipped_value_loss(values, batch["old_values"], batch["returns"],
                                                       config.cliprange_value)
        token_losses = policy.loss + config.vf_coef * value_loss - config.entropy_coef * stats.entropy
        for name, value in (("policy_loss", policy.loss), ("value_loss", value_loss), ("entropy", stats.entropy),
                            ("clip_fraction", policy.clipped.float()), ("value_clip_fraction", value_clipped.float()),
                            ("approx_kl", approximate_kl(stats.logps, batch["old_logps"])), ("tokens", 1.0)):
            value = value if isinstance(value, float) else value.detach()
            self.stats[name] = self.stats.get(name, 0.0) + float(masked_sum(torch.as_tensor(value), mask))
        return LossOutput(masked_sum(token_losses, mask))

    def step_metrics(self) -> dict[str, float]:
        """This update's token means, the rollout's figures; ends the rollout (step 7) after its last update or
        when the approximate KL passes kl_stop."""
        tokens = max(self.stats.pop("tokens", 0.0), 1.0)
        update = {name: value / tokens for name, value in self.stats.items()}
        self.stats = {}
        train_s = time.perf_counter() - self.train_started
        self.cycle["updates"] += 1
        for name, value in update.items():
            self.cycle[name] = self.cycle.get(name, 0.0) + value
        if self.config.kl_stop is not None and update.get("approx_kl", 0.0) > self.config.kl_stop and self.schedule:
            log.warning("step %d: approx KL %.4f > kl_stop %.4f: the rollout's remaining %d updates are skipped",
                        self.engine.state["step"] + 1, update["approx_kl"], self.config.kl_stop, len(self.schedule))
            self.schedule, self.cycle["early_stopped"] = [], 1
        metrics = dict(self.rollout_stats, **update, training_s=train_s, training_tokens_per_s=tokens / max(train_s, 1e-9))
        if not self.schedule:
            self.end_rollout()
        return metrics

    def end_rollout(self) -> None:
        """Step 7, and one line of ppo_metrics.jsonl: the rollout's figures and the mean over its updates."""
        config, updates = self.config, self.cycle.pop("updates")
        record = {"step": self.engine.state["step"] + 1, **self.rollout_stats, "updates": updates,
                  **{name: value / updates if name != "early_stopped" else value for name, value in self.cycle.items()}}
        if config.target_kl is not None:
            self.kl_coef = adaptive_kl_coef(self.kl_coef, self.rollout_stats["kl"], config.target_kl, config.kl_horizon,
                                            len(self.rollout_rows["input_ids"]))
        self.engine.state["ppo"] = {"kl_coef": self.kl_coef}  # saved with every checkpoint
        with open(Path(config.output_dir) / "ppo_metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def restore_state(self) -> None:
        """After a resume: the adapted kl_coef, and ppo_metrics.jsonl cut back to the checkpoint. A rollout cut by the
        checkpoint is not restored: training goes on with a fresh one."""
        state = self.engine.state
        self.kl_coef = state.get("ppo", {}).get("kl_coef", self.kl_coef)
        path = Path(self.config.output_dir) / "ppo_metrics.jsonl"
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= state["step"]]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def evaluate(self, model) -> dict[str, float]:
        step = self.engine.state["step"] if self.engine and hasattr(self.engine, "state") else 0
        return greedy_evaluation(self.config, model.policy, self.tokenizer, self.eval_prompt_ids, self.eval_problems,
                                 self.reward, self.task, step)


# ------------------------------------------------------------------------------------------------------ set-up
def train_ppo(config: PPOConfig, callbacks=None) -> dict:
    """Run PPO end to end; returns the evaluation dict (also in output_dir/evaluation.json)."""
    policy, tokenizer = load_policy(config)
    task, train_problems, eval_problems = load_problems(config)
    reward = build_reward(reward_specs(config, task), task)
    note_reward_tokenizers(reward, tokenizer)
    reference = ReferencePolicy(policy) if config.kl_coef > 0 or config.target_kl is not None else None
    model = PolicyAndValue(policy, *build_critic(config, policy, tokenizer))
    method = PPOMethod(config, tokenizer, train_problems, eval_problems, reward, task, reference)
    method.prompt_ids = chat_prompts(tokenizer, [p.prompt for p in train_problems])
    method.eval_prompt_ids = chat_prompts(tokenizer, [p.prompt for p in eval_problems])
    rollout_size = config.batch_size * config.grad_accum_steps
    if config.num_minibatches > rollout_size:
        raise ConfigError(f"num_minibatches={config.num_minibatches} exceeds the {rollout_size} completions of a "
                          "rollout (batch_size x grad_accum_steps)")
    engine = Engine(
        config, model, method, [PromptExample(ids, i) for i, ids in enumerate(method.prompt_ids)],
        [PromptExample(ids, i) for i, ids in enumerate(method.eval_prompt_ids)], tokenizer.pad_token_id,
        save_model=lambda directory: model.save(directory, tokenizer, config.model), load_model=model.load,
        resolved_config=config_to_dict(config), callbacks=callbacks,
    )
    method.engine = engine
    state = engine.train()
    with atomic_dir(Path(config.output_dir) / "final") as tmp:
        model.save(tmp, tokenizer, config.model, save_merged=config.lora.save_merged)
    return write_evaluation(config, rl_evaluation(config, policy, state), policy, tokenizer)


def reward_specs(config: PPOConfig, task) -> list[dict]:
    """The reward functions: ``rewards`` plus ``reward_model``; with neither, the task's checker."""
    specs = list(config.rewards) + ([{"model": config.reward_model, "weight": 1.0}] if config.reward_model else [])
    if not specs and task is None:
        raise ConfigError("PPO needs a reward: set reward_model (a reward run's final/) or rewards "
                          "([{function: module:fn}] or [{name: task}])")
    return specs


def note_reward_tokenizers(reward, tokenizer) -> None:
    """A reward model reads text: completions are decoded and re-tokenized for it. Say so once when its tokenizer
    differs from the policy's (then its scores cannot be read off the policy's tokens)."""
    for part in reward.parts:
        if isinstance(part.fn, RewardModelScorer) and part.fn.tokenizer.get_vocab() != tokenizer.get_vocab():
            log.warning("reward %s has a tokenizer of its own: completions are decoded to text and re-tokenized for it",
                        part.label)


def build_critic(config: PPOConfig, policy, tokenizer):
    """``(value_model, value_head)``, one of them None. The value model reads the policy's token ids, so it must
    share the policy's vocabulary; its architecture may differ (it runs its own decoder)."""
    if config.shared_value_head:
        hidden_size = causal_lm(policy).config.get_text_config().hidden_size
        head = torch.nn.Linear(hidden_size, 1).to(next(policy.parameters()).device)
        torch.nn.init.zeros_(head.weight)  # V = 0 to start: no worse than the mean return, and no random bias
        torch.nn.init.zeros_(head.bias)
        return None, head
    source = config.value_model
    if source is None:
        if config.value_init == "reward" and not config.reward_model:
            raise ConfigError("value_init=reward starts the value model from the reward model, but reward_model is "
                              "not set: set reward_model, value_init=policy, value_model=<folder> or "
                              "shared_value_head=true")
        source = config.reward_model if config.value_init == "reward" else config.model
    dtype = "float32" if config.dtype == "auto" else config.dtype
    value_model, value_tokenizer = load_reward_model(source, dtype, config.device, config.trust_remote_code, config.seed)
    if is_peft_model(value_model):  # a LoRA reward model: the critic trains in full
        value_model = value_model.merge_and_unload()
    if value_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"value model {source!r} has another tokenizer than the policy {config.model!r}: the critic "
                          "values the policy's own tokens; use value_init=policy or shared_value_head=true")
    value_model.requires_grad_(True)
    log_trainable(value_model, f"value model from {source}")
    return value_model.to(next(policy.parameters()).device), None

