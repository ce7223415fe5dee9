"""RL with verifiable rewards: GRPO, RLOO and REINFORCE on prompts whose answers a program checks.

Algorithm (one optimizer step; the engine runs the loop, precision, clipping, checkpoints):
    1. rollout: G completions for each of the step's prompts (posttrain.rollout: KV cache, shared prefill)
    2. rewards r_i: the weighted reward functions (a task's checker, user callables), each logged on its own
    3. advantages
         grpo       A_i = (r_i - mean_group) / (std_group + eps)          scale_rewards: group | batch | none
         rloo       A_i = r'_i - mean of the other G-1 r'_j,  r' = r - beta * KL(pi || pi_ref) of the sequence
         reinforce  A_i = r'_i - b,  b a moving average of the mean reward
    4. num_iterations (mu) policy updates on that rollout with the clipped surrogate
         L_t = -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A)  (+ beta k3_t for GRPO)
       aggregated per sequence (grpo), per token (token) or by a constant (dr_grpo); with mu = 1 the ratio is 1 and
       this is the plain policy gradient
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data.shared_prompts import with_shared_prompts
from posttrain.engine import LossOutput, distributed
from posttrain.errors import ConfigError
from posttrain.math import clipped_policy_loss, group_advantages, kl_estimate, masked_sum
from posttrain.math.advantages import leave_one_out_advantages, moving_average
from posttrain.math.policy import aggregated_loss_sum, loss_normaliser
from posttrain.models.forward import token_logps
from posttrain.trainers.reference import ReferencePolicy
from posttrain.trainers.rl import (
    OnlineRLConfig,
    OnlineRLMethod,
    OnlineRLSetup,
    load_online_rl,
    rollout_metrics,
    train_online,
)

log = logging.getLogger(__name__)


@dataclass
class GRPOConfig(OnlineRLConfig):
    method: Literal["grpo", "rloo", "reinforce"] = option(
        "grpo", help="the advantage estimator: grpo (group-normalised), rloo (leave-one-out) or reinforce "
                     "(moving-average baseline)")
    batch_size: int = option(4, min=1, help="prompts per micro-batch (each gets group_size completions)")
    group_size: int = option(8, min=1, help="G: completions sampled per prompt")
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group", help="grpo advantages: centred rewards divided by the group's std, the batch's std, or none (Dr. "
                      "GRPO)")
    loss_aggregation: Literal["grpo", "token", "dr_grpo"] = option(
        "grpo", help="grpo: mean over each completion's tokens, then over completions; token: mean over all tokens of "
                     "the step; dr_grpo: sum / (completions x max_new_tokens)")
    epsilon: float = option(0.2, min=0, aliases=("epsilon_low",),
                            help="lower clip of the ratio pi / pi_old: 1 - epsilon (and the upper one, 1 + epsilon, "
                                 "unless epsilon_high is set)")
    epsilon_high: float | None = option(None, min=0, help="upper clip of the ratio pi / pi_old: 1 + epsilon_high "
                                                          "(DAPO's clip-higher); None: epsilon")
    num_iterations: int = option(1, min=1, help="mu: policy updates (optimizer steps) per rollout")
    beta: float = option(0.0, min=0, help="KL coefficient toward the reference policy; 0 loads no reference model")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k3", help="estimator of KL(pi || pi_ref) per token (Schulman "
                                                                "2020), when beta > 0")
    mask_truncated_completions: bool = option(False, help="completions that hit max_new_tokens without EOS carry no "
                                                          "loss")
    skip_zero_variance_groups: bool = option(False, help="drop groups whose rewards are all equal (no signal) from the "
                                                         "update")
    pack_groups: bool = option(True, help="score each group's completions with its prompt run once (branches under a "
                                          "4D mask, as DPO's pack_pairs): same log-probs as padded rows, fewer "
                                          "positions; needs SDPA or eager attention")
    baseline_decay: float = option(0.9, min=0, max=1, help="reinforce: decay of the moving-average baseline of the "
                                                           "mean reward")
    learning_rate: float = option(5e-6, min=0, help="AdamW's peak learning rate, reached after warmup_steps")
    lr_schedule: Literal["constant", "linear", "cosine"] = option(
        "constant", help="after warmup: constant, or a linear or cosine decay to 0 at the last step")
    logging_steps: int = option(1, min=1, help="optimizer steps per log_history.jsonl record (loss and metrics "
                                               "averaged over them); the last step is always logged")


def grpo_advantages(rewards, config: GRPOConfig, baseline: float | None):
    return group_advantages(rewards, config.group_size, config.scale_rewards), baseline


def rloo_advantages(rewards, config: GRPOConfig, baseline: float | None):
    return leave_one_out_advantages(rewards, config.group_size), baseline


def reinforce_advantages(rewards, config: GRPOConfig, baseline: float | None):
    """A = r - b with b the moving average of the mean reward before this rollout; returns the updated b."""
    advantages = rewards - (baseline if baseline is not None else rewards.mean())
    return advantages, moving_average(baseline, float(rewards.mean()), config.baseline_decay)


# method -> (rewards (N,), config, baseline) -> (advantages (N,), baseline): step 3 of the algorithm
ADVANTAGE_ESTIMATORS = {"grpo": grpo_advantages, "rloo": rloo_advantages, "reinforce": reinforce_advantages}
KL_IN_LOSS = {"grpo"}  # the others subtract beta * KL(pi || pi_ref) of each completion from its reward


class PolicyGradientMethod(OnlineRLMethod):
    """Rollout, rewards and advantages in ``prepare_step``; the clipped surrogate in ``loss``."""

    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed); sampling gathers the full weights

    def __init__(self, config: GRPOConfig, tokenizer, setup: OnlineRLSetup, reference: ReferencePolicy | None):
        super().__init__(config, tokenizer, setup)
        if config.skip_zero_variance_groups:  # can leave a rank a micro-batch without rows, which FSDP must still run
            self.fsdp = False
        self.reference = reference
        self.baseline: float | None = None  # REINFORCE's moving average
        self.rollout_batches: list[dict] = []
        self.stats: dict[str, float] = {}
        self.rollout_metrics: dict[str, float] = {}  # of the rollout the current cycle trains on

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        if "loss_mask" not in batch:
            return 0
        return loss_normaliser(batch["loss_mask"][:, 1:], self.config.loss_aggregation, self.config.max_new_tokens)

    # ------------------------------------------------------------------------------------------ steps 1-3
    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]], step: int) -> None:
        """A new rollout every num_iterations optimizer steps (and after a resume); the steps in between reuse it
        (their prompts are not used)."""
        example_index = torch.cat([b["example_index"] for b in micro_batches])
        if step % self.config.num_iterations == 0 or not self.rollout_batches:
            self.rollout_batches = self.rollout(model, example_index, len(micro_batches), step)
        for batch, rows in zip(micro_batches, self.rollout_batches):
            batch.clear()
            batch.update({k: v.to(example_index.device) for k, v in rows.items()})  # restored ones are on the CPU
        self.train_started = time.perf_counter()

    @torch.no_grad()
    def rollout(self, model, example_index: torch.Tensor, n_micro: int, step: int) -> list[dict]:
        config, G = self.config, self.config.group_size
        scored = self.sample_and_score(model, example_index, step, group_size=G)
        rollout, rewards, rows = scored.rollout, scored.rewards, scored.rows
        device = rows["input_ids"].device
        rows["prompt_index"] = rollout.prompt_index.to(device)
        rows["prompt_length"] = torch.tensor([len(ids) for ids in rollout.prompt_ids], device=device)
        if config.mask_truncated_completions:
            rows["loss_mask"][rollout.truncated.to(device)] = 0
        scored_rows = self.model_batch(rows) if self.reference is not None or config.num_iterations > 1 else rows
        if self.reference is not None:
            rows["ref_token_logps"] = self.reference.token_logps(model, scored_rows, config.temperature)
        if config.num_iterations > 1:  # the ratio's denominator: the policy that sampled, as the trainer scores it
            rows["old_token_logps"] = token_logps(model, scored_rows, temperature=config.temperature)[0].logps

        sequence_kl = None
        if self.reference is not None:
            policy_logps = rows.get("old_token_logps")
            if policy_logps is None:
                policy_logps = token_logps(model, scored_rows, temperature=config.temperature)[0].logps
            sequence_kl = masked_sum(policy_logps - rows["ref_token_logps"], rows["loss_mask"][:, 1:], -1).cpu()
        shaped = rewards if config.method in KL_IN_LOSS or sequence_kl is None else rewards - config.beta * sequence_kl
        advantages, self.baseline = self.estimate_advantages(shaped)

        zero_variance = rewards.view(-1, G).std(dim=1) == 0 if G > 1 else torch.zeros(len(rewards) // G, dtype=torch.bool)
        keep = ~zero_variance.repeat_interleave(G) if config.skip_zero_variance_groups else torch.ones_like(rewards).bool()
        rows["advantages"] = advantages.to(device)
        self.record_rollout(scored, zero_variance, sequence_kl)
        kept = keep.nonzero().squeeze(-1)
        chunks = [c for c in kept.tensor_split(n_micro)] if len(kept) else [kept] * n_micro
        return [self.model_batch({k: v[c.to(device)] for k, v in rows.items()}) if len(c) else {} for c in chunks]

    def estimate_advantages(self, shaped: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        """Step 3 over the whole step batch: under torchrun every rank's rewards are gathered in rank order (the
        order one process holds them in), so batch statistics (scale_rewards: batch) and REINFORCE's baseline are the
        global batch's; returns this rank's advantages. In one process the estimator sees ``shaped`` itself."""
        everyone = distributed.gather_tensors(shaped)
        start = sum(len(part) for part in everyone[: distributed.rank()])
        advantages, baseline = ADVANTAGE_ESTIMATORS[self.config.method](torch.cat(everyone), self.config, self.baseline)
        return advantages[start : start + len(shaped)], baseline

    def model_batch(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Padded rollout rows, plus (pack_groups) the layout the model runs on: each group's prompt once."""
        if not self.config.pack_groups:
            return rows
        return with_shared_prompts(rows, rows["prompt_index"], rows["prompt_length"])

    # ------------------------------------------------------------------------------------------- step 4
    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        config = self.config
        stats, mask = token_logps(model, batch, with_entropy=True, temperature=config.temperature)
        old_logps = batch.get("old_token_logps", stats.logps.detach())
        advantages = batch["advantages"].unsqueeze(-1)
        surrogate = clipped_policy_loss(stats.logps, old_logps, advantages, config.epsilon, config.epsilon_high)
        token_losses = surrogate.loss
        if config.method in KL_IN_LOSS and self.reference is not None:
            kl = kl_estimate(stats.logps, batch["ref_token_logps"], config.kl_estimator)
            token_losses = token_losses + config.beta * kl
            self.add("kl_sum", float(masked_sum(kl.detach(), mask)))
        # the clipped branch was taken: below 1 - eps for a negative advantage, above 1 + eps_high for a positive one
        clipped_low = surrogate.clipped & (advantages < 0)
        clipped_high = surrogate.clipped & (advantages > 0)
        self.add("tokens", float(mask.sum()))
        self.add("clipped_low_sum", float(masked_sum(clipped_low.float(), mask)))
        self.add("clipped_high_sum", float(masked_sum(clipped_high.float(), mask)))
        self.add("entropy_sum", float(masked_sum(stats.entropy.detach(), mask)))
        return LossOutput(aggregated_loss_sum(token_losses, mask, config.loss_aggregation))

    # ------------------------------------------------------------------------------------------ logging
    def add(self, name: str, value: float) -> None:
        self.stats[name] = self.stats.get(name, 0.0) + value

    def record_rollout(self, scored, zero_variance, sequence_kl) -> None:
        self.rollout_metrics = {
            **rollout_metrics(scored),
            **{f"reward/{name}_std": float(torch.tensor(v).std(unbiased=False))
               for name, v in scored.per_function.items()},
            "zero_variance_groups": float(zero_variance.float().mean()),
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

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """REINFORCE's baseline; with num_iterations > 1, the rollout the next steps of its cycle reuse (and its
        logged figures), so a run resumed mid-cycle trains on the rollout the uninterrupted run does."""
        state = {"baseline": self.baseline}
        if self.config.num_iterations > 1 and distributed.world_size() > 1:
            # under torchrun each rank holds its own share of the rollout, and rank 0 writes the checkpoint: every
            # rank's share goes into it (a collective: every rank calls this when a checkpoint is written)
            cpu = [{k: v.cpu() for k, v in batch.items()} for batch in self.rollout_batches]
            state["rollouts_by_rank"] = distributed.gather_objects(
                {"rollout_batches": cpu, "rollout_metrics": self.rollout_metrics})
        elif self.config.num_iterations > 1:
            state.update(rollout_batches=self.rollout_batches, rollout_metrics=self.rollout_metrics)
        return state

    def load_state_dict(self, state: dict, step: int) -> None:
        self.baseline = state.get("baseline")
        if step % self.config.num_iterations:  # mid-cycle: the cycle's rollout, else the next step samples anew
            saved = state.get("rollouts_by_rank", [state])
            if len(saved) != distributed.world_size():
                raise ConfigError(f"the checkpoint of step {step} is in the middle of a rollout's num_iterations="
                                  f"{self.config.num_iterations} updates, written by {len(saved)} process(es), each "
                                  f"holding its share of the rollout: resume it with {len(saved)} process(es), or "
                                  f"from a checkpoint at a step that is a multiple of {self.config.num_iterations}")
            self.rollout_batches = saved[distributed.rank()]["rollout_batches"]
            self.rollout_metrics = saved[distributed.rank()]["rollout_metrics"]


def train_grpo(config: GRPOConfig, callbacks=None) -> dict:
    """Run GRPO / RLOO / REINFORCE end to end; returns the evaluation dict (also in output_dir/evaluation.json)."""
    if config.method != "reinforce" and config.group_size < 2:
        raise ConfigError(f"method={config.method} compares completions of the same prompt: set group_size >= 2")
    model, tokenizer, setup = load_online_rl(config)
    reference = ReferencePolicy(model) if config.beta > 0 else None
    method = PolicyGradientMethod(config, tokenizer, setup, reference)
    return train_online(config, model, tokenizer, method, callbacks)
