"""RL with verifiable rewards: GRPO, RLOO and REINFORCE on prompts whose answers a program checks.

Algorithm (one optimizer step; the engine runs the loop, precision, clipping, checkpoints):
    1. rollout: G completions for each of the step's prompts (posttrain.rollout: KV cache, shared prefill)
    2. rewards r_i: the weighted reward functions (a task's checker, user callables), each logged on its own
    3. advantages
         grpo       A_i = (r_i - mean_group) / (std_group + eps)          scale_rewards: group | batch | none
         rloo       A_i = r'_i - mean of the other G-1 r'_j,  r' = r - beta * KL(pi || pi_ref) of the sequence
         reinforce  A_i = r'_i - b,  b a moving average of the mean reward
    4. num_iterations (mu) policy updates on that rollout with the clipped surrogate
         L_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)  (+ beta k3_t for GRPO)
       aggregated per sequence (grpo), per token (token) or by a constant (dr_grpo); with mu = 1 the ratio is 1 and
       this is the plain policy gradient
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from posttrain.data.preference import collate_sequences
from posttrain.data.shared_prompts import with_shared_prompts
from posttrain.engine import Engine, LossOutput
from posttrain.errors import ConfigError
from posttrain.math import clipped_policy_loss, group_advantages, kl_estimate, masked_sum
from posttrain.math.advantages import leave_one_out_advantages, moving_average
from posttrain.math.policy import aggregated_loss_sum, loss_normaliser
from posttrain.models.forward import token_logps
from posttrain.rollout import chat_prompts, sample
from posttrain.tasks.rewards import build_reward
from posttrain.trainers.common import load_policy, train_and_save, write_evaluation
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
class GRPOConfig(OnlineRLConfig):
    method: Literal["grpo", "rloo", "reinforce"] = "grpo"
    batch_size: int = field(default=4, metadata={"min": 1})  # prompts per micro-batch (each gets group_size rows)
    group_size: int = field(default=8, metadata={"min": 1})  # G completions per prompt
    scale_rewards: Literal["group", "batch", "none"] = "group"
    loss_aggregation: Literal["grpo", "token", "dr_grpo"] = "grpo"
    epsilon_low: float = field(default=0.2, metadata={"min": 0})
    epsilon_high: float | None = field(default=None, metadata={"min": 0})  # None: = epsilon_low
    num_iterations: int = field(default=1, metadata={"min": 1})  # mu: policy updates per rollout
    beta: float = field(default=0.0, metadata={"min": 0})  # KL coefficient; 0 loads no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    mask_truncated_completions: bool = False  # completions without EOS carry no loss
    skip_zero_variance_groups: bool = False  # drop groups whose rewards are all equal (no signal) from the update
    # score each group's completions with its prompt run once (branches under a 4D mask, as DPO's pack_pairs); same
    # log-probs as padded rows, fewer positions. Needs SDPA or eager attention.
    pack_groups: bool = True
    baseline_decay: float = field(default=0.9, metadata={"min": 0, "max": 1})  # REINFORCE moving-average baseline
    learning_rate: float = field(default=5e-6, metadata={"min": 0})
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    logging_steps: int = field(default=1, metadata={"min": 1})


class PolicyGradientMethod:
    """Rollout, rewards and advantages in ``prepare_step``; the clipped surrogate in ``loss``."""

    def __init__(self, config: GRPOConfig, tokenizer, train_problems, eval_problems, reward, task, reference):
        self.config, self.tokenizer, self.reward, self.task, self.reference = config, tokenizer, reward, task, reference
        self.train_problems, self.eval_problems = train_problems, eval_problems
        self.sampling = rollout_params(config)
        self.baseline: float | None = None
        self.rollout_batches: list[dict] = []
        self.iteration = 0
        self.engine: Engine | None = None
        self.stats: dict[str, float] = {}

    collate = staticmethod(prompt_batch)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        if "loss_mask" not in batch:
            return 0
        return loss_normaliser(batch["loss_mask"][:, 1:], self.config.loss_aggregation, self.config.max_new_tokens)

    # ------------------------------------------------------------------------------------------ rollout
    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        """Steps 1-3 every num_iterations optimizer steps; the steps in between reuse that rollout (their prompts
        are not used)."""
        if self.iteration % self.config.num_iterations == 0:
            self.rollout_batches = self.rollout(model, torch.cat([b["example_index"] for b in micro_batches]),
                                                len(micro_batches))
        self.iteration += 1
        for batch, rows in zip(micro_batches, self.rollout_batches):
            batch.clear()
            batch.update(rows)
        self.train_started = time.perf_counter()

    @torch.no_grad()
    def rollout(self, model, example_index: torch.Tensor, n_micro: int) -> list[dict]:
        config, G = self.config, self.config.group_size
        problems = [self.train_problems[i] for i in example_index.tolist()]
        was_training = model.training
        model.eval()
        self.sampling.seed = config.seed * 1_000_003 + (self.engine.state["step"] if self.engine else 0)
        rollout = sample(model, self.tokenizer, [self.prompt_ids[i] for i in example_index.tolist()], self.sampling,
                         group_size=G)
        model.train(was_training)
        row_problems = [problems[i] for i in rollout.prompt_index.tolist()]
        rewards_list, per_function = self.reward([p.prompt for p in row_problems], rollout.texts, row_problems)
        rewards = torch.tensor(rewards_list, dtype=torch.float32)

        lengths = rollout.completion_mask.sum(-1)
        sequences = [(rollout.prompt_ids[i], rollout.completion_ids[i, : lengths[i]].tolist()) for i in range(len(rewards))]
        device = next(model.parameters()).device
        rows = collate_sequences(sequences, self.tokenizer.pad_token_id)
        rows["prompt_index"] = rollout.prompt_index.clone()
        rows["prompt_length"] = torch.tensor([len(rollout.prompt_ids[i]) for i in range(len(rewards))])
        rows = {k: v.to(device) for k, v in rows.items()}
        if config.mask_truncated_completions:
            rows["loss_mask"][rollout.truncated.to(device)] = 0
        scored = self.model_batch(rows) if self.reference is not None or config.num_iterations > 1 else rows
        if self.reference is not None:
            rows["ref_token_logps"] = self.reference.token_logps(model, scored, config.temperature)
        if config.num_iterations > 1:  # the ratio's denominator: the policy that sampled, as the trainer scores it
            rows["old_token_logps"] = token_logps(model, scored, temperature=config.temperature)[0].logps

        sequence_kl = None
        if self.reference is not None:
            policy_logps = rows.get("old_token_logps")
            if policy_logps is None:
                policy_logps = token_logps(model, scored, temperature=config.temperature)[0].logps
            shifted = rows["loss_mask"][:, 1:]
            sequence_kl = masked_sum(policy_logps - rows["ref_token_logps"], shifted, -1).cpu()  # k1, summed
        advantages = self.advantages(rewards, sequence_kl)

        zero_variance = rewards.view(-1, G).std(dim=1) == 0 if G > 1 else torch.zeros(len(rewards) // G, dtype=torch.bool)
        keep = torch.ones(len(rewards), dtype=torch.bool)
        if config.skip_zero_variance_groups:
            keep = ~zero_variance.repeat_interleave(G)
        rows["advantages"] = advantages.to(device)
        self.record_rollout(rollout, rewards, per_function, zero_variance, sequence_kl)
        kept = keep.nonzero().squeeze(-1)
        chunks = [c for c in kept.tensor_split(n_micro)] if len(kept) else [kept] * n_micro
        return [self.model_batch({k: v[c.to(device)] for k, v in rows.items()}) if len(c) else {} for c in chunks]

    def model_batch(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Padded rollout rows, plus (pack_groups) the layout the model runs on: each group's prompt once."""
        if not self.config.pack_groups:
            return rows
        return with_shared_prompts(rows, rows["prompt_index"], rows["prompt_length"])

    def advantages(self, rewards: torch.Tensor, sequence_kl: torch.Tensor | None) -> torch.Tensor:
        config = self.config
        if config.method == "grpo":  # KL goes into the loss, per token
            return group_advantages(rewards, config.group_size, config.scale_rewards)
        shaped = rewards if sequence_kl is None else rewards - config.beta * sequence_kl  # KL in the reward
        if config.method == "rloo":
            return leave_one_out_advantages(shaped, config.group_size)
        advantages = shaped - (self.baseline if self.baseline is not None else shaped.mean())
        self.baseline = moving_average(self.baseline, float(shaped.mean()), config.baseline_decay)
        return advantages

    # --------------------------------------------------------------------------------------------- loss
    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        config = self.config
        stats, mask = token_logps(model, batch, with_entropy=True, temperature=config.temperature)
        old_logps = batch.get("old_token_logps", stats.logps.detach())
        surrogate = clipped_policy_loss(stats.logps, old_logps, batch["advantages"].unsqueeze(-1), config.epsilon_low,
                                        config.epsilon_high)
        token_losses = surrogate.loss
        if config.method == "grpo" and self.reference is not None:
            kl = kl_estimate(stats.logps, batch["ref_token_logps"], config.kl_estimator)
            token_losses = token_losses + config.beta * kl
            self.add("kl_sum", float(masked_sum(kl.detach(), mask)))
        ratio = surrogate.ratio.detach()
        advantages = batch["advantages"].unsqueeze(-1).expand_as(ratio)
        self.add("tokens", float(mask.sum()))
        self.add("clipped_low_sum", float(masked_sum(((ratio < 1 - config.epsilon_low) & (advantages < 0)).float(), mask)))
        high = config.epsilon_high if config.epsilon_high is not None else config.epsilon_low
        self.add("clipped_high_sum", float(masked_sum(((ratio > 1 + high) & (advantages > 0)).float(), mask)))
        self.add("entropy_sum", float(masked_sum(stats.entropy.detach(), mask)))
        return LossOutput(aggregated_loss_sum(token_losses, mask, config.loss_aggregation))

    # ------------------------------------------------------------------------------------------ logging
    def add(self, name: str, value: float) -> None:
        self.stats[name] = self.stats.get(name, 0.0) + value

    def record_rollout(self, rollout, rewards, per_function, zero_variance, sequence_kl) -> None:
        lengths = rollout.completion_mask.sum(-1).float()
        self.stats = {"tokens": 0.0}
        self.rollout_metrics = {
            "reward": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
            **{f"reward/{name}": sum(v) / len(v) for name, v in per_function.items()},
            **{f"reward/{name}_std": float(torch.tensor(v).std(unbiased=False)) for name, v in per_function.items()},
            "completion_length": float(lengths.mean()), "completion_length_max": float(lengths.max()),
            "truncated_fraction": float(rollout.truncated.float().mean()),
            "zero_variance_groups": float(zero_variance.float().mean()),
            "generation_s": rollout.generation_time_s,
            "generation_tokens_per_s": rollout.num_generated_tokens / max(rollout.generation_time_s, 1e-9),
        }
        if sequence_kl is not None:
            self.rollout_metrics["kl_sequence"] = float(sequence_kl.mean())

    def step_metrics(self) -> dict[str, float]:
        tokens = max(self.stats.get("tokens", 0.0), 1.0)
        train_s = time.perf_counter() - self.train_started
        metrics = dict(self.rollout_metrics, training_s=train_s,
                       training_tokens_per_s=self.stats.get("tokens", 0.0) / max(train_s, 1e-9),
                       clip_fraction_low=self.stats.get("clipped_low_sum", 0.0) / tokens,
                       clip_fraction_high=self.stats.get("clipped_high_sum", 0.0) / tokens,
                       entropy=self.stats.get("entropy_sum", 0.0) / tokens)
        if "kl_sum" in self.stats:
            metrics["kl"] = self.stats["kl_sum"] / tokens
        self.stats = {"tokens": 0.0}
        return metrics

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, model) -> dict[str, float]:
        step = self.engine.state["step"] if self.engine and hasattr(self.engine, "state") else 0
        return greedy_evaluation(self.config, model, self.tokenizer, self.eval_prompt_ids, self.eval_problems,
                                 self.reward, self.task, step)


def train_grpo(config: GRPOConfig, callbacks=None) -> dict:
    """Run GRPO / RLOO / REINFORCE end to end; returns the evaluation dict (also in output_dir/evaluation.json)."""
    if config.method != "reinforce" and config.group_size < 2:
        raise ConfigError(f"method={config.method} compares completions of the same prompt: set group_size >= 2")
    model, tokenizer = load_policy(config)
    task, train_problems, eval_problems = load_problems(config)
    reward = build_reward(config.rewards, task)
    reference = ReferencePolicy(model) if config.beta > 0 else None
    method = PolicyGradientMethod(config, tokenizer, train_problems, eval_problems, reward, task, reference)
    method.prompt_ids = chat_prompts(tokenizer, [p.prompt for p in train_problems])
    method.eval_prompt_ids = chat_prompts(tokenizer, [p.prompt for p in eval_problems])
    train_examples = [PromptExample(ids, i) for i, ids in enumerate(method.prompt_ids)]
    eval_examples = [PromptExample(ids, i) for i, ids in enumerate(method.eval_prompt_ids)]
    state = train_and_save(config, model, tokenizer, method, train_examples, eval_examples, callbacks)
    return write_evaluation(config, rl_evaluation(config, model, state), model, tokenizer)
