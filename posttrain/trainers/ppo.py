"""PPO RLHF (Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022): a policy trained against a reward with a
per-token KL penalty to a frozen reference, and a learned value function for GAE.

Four roles: the policy (trained), the reference (frozen: a copy, or under LoRA the policy with adapters off), the
reward (a reward model and/or rule rewards, frozen) and the critic (a value model started from the reward model or
the policy, or a value head on the policy's decoder; trained with the policy, one optimizer).

Algorithm, for each rollout of B = batch_size x grad_accum_steps prompts:
    1. sample one completion y ~ pi_old(. | x) per prompt                       (posttrain.rollout)
    2. score s(x, y): the rewards; optionally - penalty without EOS, whitened, clipped
    3. no grad: log pi_old, log pi_ref and V_old at every completion token
    4. r_t = s on the last token (sparse) or s / |y| on each (dense) - beta * kl_t        (posttrain.math.rlhf)
    5. A_t, R_t = GAE(r, V_old; gamma, lambda) (posttrain.math.token_gae); A whitened over the rollout
    6. for each of ppo_epochs: shuffle the rollout into num_minibatches minibatches; each is one optimizer step of
         L = mean_t [ -min(rho_t A_t, clip(rho_t, 1 +- eps) A_t) + vf_coef * max((V - R)^2, (V_clip - R)^2) / 2
                      - entropy_coef * H_t ]                                    (token mean over the minibatch)
       and the epochs stop early when the approximate KL to pi_old exceeds kl_stop
    7. adapt beta toward target_kl (Ziegler et al. 2019)
One engine step is one minibatch update, so max_steps = rollouts x ppo_epochs x num_minibatches; a step that starts a
rollout takes its prompts, the steps that reuse it ignore theirs.

Under torchrun each rank samples, scores and values its own prompts (steps 1-5 but the whitening), then every rank
gathers the whole rollout in rank order, the order one process holds it in: the rollout's whitening, statistics and
adaptive beta, and the minibatch permutation are the global ones, and each rank trains on its contiguous share of
every minibatch (docs/distributed.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import option
from posttrain.engine import LossOutput, distributed, fsdp
from posttrain.engine.run_log import append_jsonl
from posttrain.errors import ConfigError
from posttrain.math import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    kl_estimate,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    token_gae,
    token_level_scores,
    whiten,
)
from posttrain.rollout.rewards import RewardModelScorer
from posttrain.trainers.critic import PolicyAndValue, PolicyAndValueFiles, build_critic
from posttrain.trainers.reference import ReferencePolicy
from posttrain.trainers.rl import (
    OnlineRLConfig,
    OnlineRLMethod,
    OnlineRLSetup,
    gather_rollout,
    load_online_rl,
    rollout_metrics,
    rollout_seed,
    train_online,
)

log = logging.getLogger(__name__)


@dataclass
class PPOConfig(OnlineRLConfig):
    method: Literal["ppo"] = option("ppo", help="PPO with a critic (value model), GAE and a KL penalty in the reward")
    reward_model: str | None = option(None, help="a reward model folder (a reward run's final/), added to rewards at "
                                                 "weight 1; None: rewards only")
    value_model: str | None = option(None, help="a folder to start the critic from; None: value_init decides")
    value_init: Literal["reward", "policy"] = option(
        "reward", help="the critic starts from the reward model's weights, or from the policy's (with a new head)")
    shared_value_head: bool = option(False, help="a value head on the policy's decoder instead of a separate value "
                                                 "model")
    batch_size: int = option(8, min=1, help="prompts per micro-batch of a rollout")
    ppo_epochs: int = option(4, min=1, help="passes over each rollout")
    num_minibatches: int = option(1, min=1, help="minibatches per pass, each one optimizer step")
    gamma: float = option(1.0, min=0, max=1, help="GAE's discount per token")
    gae_lambda: float = option(0.95, min=0, max=1, help="GAE's lambda: 0 one-step TD, 1 Monte Carlo returns")
    epsilon: float = option(0.2, min=0, aliases=("cliprange",),
                            help="clip of the ratio pi / pi_old to [1 - epsilon, 1 + epsilon] (upper: epsilon_high)")
    epsilon_high: float | None = option(None, min=0, help="upper clip of the ratio pi / pi_old: 1 + epsilon_high "
                                                          "(DAPO's clip-higher); None: epsilon")
    cliprange_value: float | None = option(0.2, min=0, help="clip of the value update V - V_old to +-cliprange_value; "
                                                            "None: unclipped value loss")
    vf_coef: float = option(0.1, min=0, help="weight of the value loss")
    value_learning_rate: float | None = option(None, min=0, help="the critic's own learning rate; None: learning_rate")
    entropy_coef: float = option(0.0, min=0, help="weight of the entropy bonus")
    beta: float = option(0.05, min=0, aliases=("kl_coef",),
                         help="KL coefficient of r_t = s_t - beta kl_t (the initial one, when target_kl makes it "
                              "adaptive); 0 with no target_kl loads no reference model")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", help="estimator of KL(pi || pi_ref) per token in the reward "
                                                                "(Schulman 2020)")
    target_kl: float | None = option(None, min=0, help="adaptive KL control of beta toward this sequence KL "
                                                       "(Ziegler et al. 2019); None: fixed beta")
    kl_horizon: float = option(10000.0, min=1, help="horizon of the adaptive KL controller: larger adapts beta more "
                                                    "slowly")
    kl_stop: float | None = option(None, min=0, help="skip a rollout's remaining updates once an update's approximate "
                                                     "KL to pi_old exceeds this; None: never")
    reward_mode: Literal["sparse", "dense"] = option(
        "sparse", help="sparse: the score on the last completion token; dense: score / length on every completion "
                       "token")
    missing_eos_penalty: float | None = option(None, min=0, help="subtracted from the score of a completion without "
                                                                 "EOS; None: no penalty")
    whiten_rewards: bool = option(False, help="scale the rollout's scores to unit variance (their mean kept)")
    reward_clip: float | None = option(None, min=0, help="clip the score to [-c, c]; None: no clipping")
    learning_rate: float = option(3e-6, min=0, help="AdamW's peak learning rate, reached after warmup_steps")
    lr_schedule: Literal["constant", "linear", "cosine"] = option(
        "constant", help="after warmup: constant, or a linear or cosine decay to 0 at the last step")
    logging_steps: int = option(1, min=1, help="optimizer steps per log_history.jsonl record (loss and metrics "
                                               "averaged over them); the last step is always logged")


class PPOMethod(OnlineRLMethod):
    """Steps 1-5 in ``prepare_step`` (every ppo_epochs x num_minibatches steps), step 6 for one minibatch in
    ``loss``, step 7 in ``after_update``."""

    outputs = ("samples.jsonl", "ppo_metrics.jsonl")
    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed); sampling gathers the full weights

    def __init__(self, config: PPOConfig, tokenizer, setup: OnlineRLSetup, reference: ReferencePolicy | None):
        super().__init__(config, tokenizer, setup)
        self.reference = reference
        self.beta = config.beta  # adapted toward target_kl after each rollout
        self.rollout_rows: dict[str, torch.Tensor] | None = None
        self.schedule: list[torch.Tensor] = []  # the minibatch row indices still to train on, in order
        self.stats: dict[str, float] = {}
        self.rollout_stats: dict[str, float] = {}
        self.last_update: dict[str, float] = {}

    def policy(self, model):
        return model.policy

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
    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]], step: int) -> None:
        if not self.schedule:
            self.rollout(model, torch.cat([b["example_index"] for b in micro_batches]), step)
        device = micro_batches[0]["example_index"].device  # a rollout restored from a checkpoint is on the CPU
        rows = self.schedule.pop(0).to(device)
        if distributed.world_size() > 1:  # the rollout is global: this rank's contiguous share of the minibatch
            base, extra = divmod(len(rows), distributed.world_size())
            start = distributed.rank() * base + min(distributed.rank(), extra)
            rows = rows[start : start + base + (distributed.rank() < extra)]
        for batch, chunk in zip(micro_batches, rows.tensor_split(len(micro_batches))):
            batch.clear()
            if len(chunk):
                batch.update({k: v.to(device)[chunk] for k, v in self.rollout_rows.items()})
            elif fsdp.is_sharded(model):  # every rank runs every pass under FSDP: a row that carries no loss
                batch.update({k: v[:1].to(device) for k, v in self.rollout_rows.items()})
                batch["loss_mask"] = torch.zeros_like(batch["loss_mask"])
        self.train_started = time.perf_counter()

    @torch.no_grad()
    def rollout(self, model, example_index: torch.Tensor, step: int) -> None:
        config = self.config
        scored = self.sample_and_score(model, example_index, step)
        rows = scored.rows
        scores = self.global_shaped_scores(scored.rewards, scored.rollout.truncated.to(scored.rewards.device))
        old, old_values, mask = model(rows, config.temperature)
        ref_logps = self.reference.token_logps(model.policy, rows, config.temperature) if self.reference else old.logps
        token_scores = token_level_scores(scores.to(mask.device), mask, config.reward_mode)
        rewards, kl = kl_penalized_rewards(token_scores, old.logps, ref_logps, mask, self.beta, config.kl_estimator)
        advantages, returns = token_gae(rewards, old_values, mask, config.gamma, config.gae_lambda)
        rows.update(old_logps=old.logps, old_values=old_values, returns=returns, advantages=advantages)
        if distributed.world_size() > 1:  # steps 1-5 are row by row up to here; the rest is over the whole rollout
            rows.update(rewards=rewards, kl=kl, scores=scores.to(mask.device), mask=mask)
            rows = gather_rollout(rows, self.tokenizer.pad_token_id)
            rewards, kl, scores, mask = rows.pop("rewards"), rows.pop("kl"), rows.pop("scores"), rows.pop("mask")
            old_values, returns, advantages = rows["old_values"], rows["returns"], rows["advantages"]
        rows["advantages"] = whiten(advantages, mask)
        self.rollout_rows = rows

        generator = torch.Generator().manual_seed(rollout_seed(config.seed, step))
        self.schedule = [minibatch.to(mask.device) for _ in range(config.ppo_epochs)
                         for minibatch in torch.randperm(len(scores), generator=generator).tensor_split(
                             config.num_minibatches)]
        sequence_kl = masked_sum(kl, mask, -1)
        self.rollout_stats = {
            **rollout_metrics(scored),
            "score": float(scores.mean()), "reward_with_kl": float(masked_sum(rewards, mask, -1).mean()),
            "non_score_reward": float(-self.beta * sequence_kl.mean()), "kl": float(sequence_kl.mean()),
            "kl_coef": self.beta, "advantage_mean": float(masked_mean(advantages, mask)),
            "advantage_std": float(masked_mean((advantages - masked_mean(advantages, mask)) ** 2, mask).sqrt()),
            "value_mean": float(masked_mean(old_values, mask)), "return_mean": float(masked_mean(returns, mask)),
            "explained_variance": explained_variance(old_values, returns, mask),
        }
        if distributed.world_size() > 1:  # the rollout's figures over all ranks' rows, not averages of ranks'
            lengths = rows["loss_mask"].sum(-1).float()
            rewards = torch.cat(distributed.gather_tensors(scored.rewards))
            truncated = torch.cat(distributed.gather_tensors(scored.rollout.truncated.float()))
            self.rollout_stats.update(
                reward=float(rewards.mean()), reward_std=float(rewards.std(unbiased=False)),
                completion_length=float(lengths.mean()), completion_length_max=float(lengths.max()),
                truncated_fraction=float(truncated.mean()))
        self.cycle = {"updates": 0, "early_stopped": 0}

    def global_shaped_scores(self, scores: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
        """``shaped_scores`` over the whole rollout (whiten_rewards uses every rank's scores); this rank's part."""
        if distributed.world_size() == 1:
            return self.shaped_scores(scores, truncated)
        everyone = distributed.gather_tensors(scores)
        start = sum(len(part) for part in everyone[: distributed.rank()])
        shaped = self.shaped_scores(torch.cat(everyone), torch.cat(distributed.gather_tensors(truncated)))
        return shaped[start : start + len(scores)]

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
        policy = clipped_policy_loss(stats.logps, batch["old_logps"], batch["advantages"], config.epsilon,
                                     config.epsilon_high)
        value_loss, value_clipped = clipped_value_loss(values, batch["old_values"], batch["returns"],
                                                       config.cliprange_value)
        token_losses = policy.loss + config.vf_coef * value_loss - config.entropy_coef * stats.entropy
        # approx_kl: KL(pi_old || pi) by k2 on tokens sampled from pi_old, how far this update moved the policy
        for name, value in (("policy_loss", policy.loss), ("value_loss", value_loss), ("entropy", stats.entropy),
                            ("clip_fraction", policy.clipped.float()), ("value_clip_fraction", value_clipped.float()),
                            ("approx_kl", kl_estimate(batch["old_logps"], stats.logps, "k2")), ("tokens", 1.0)):
            value = value if isinstance(value, float) else value.detach()
            self.stats[name] = self.stats.get(name, 0.0) + float(masked_sum(torch.as_tensor(value), mask))
        return LossOutput(masked_sum(token_losses, mask))

    def step_metrics(self) -> dict[str, float]:
        """This update's token means, beside the rollout's figures."""
        # over all ranks' tokens: approx_kl decides kl_stop, which must be the same decision on every rank
        self.stats = distributed.sum_over_ranks(self.stats)
        tokens = max(self.stats.pop("tokens", 0.0), 1.0)
        self.last_update = {name: value / tokens for name, value in self.stats.items()}
        self.stats = {}
        train_s = time.perf_counter() - self.train_started
        self.cycle["updates"] += 1
        for name, value in self.last_update.items():
            self.cycle[name] = self.cycle.get(name, 0.0) + value
        return dict(self.rollout_stats, **self.last_update, training_s=train_s,
                    training_tokens_per_s=tokens / max(train_s, 1e-9))

    # --------------------------------------------------------------------------------- step 7: after an update
    def after_update(self, step: int) -> None:
        """The rollout ends after its last update, or early when the approximate KL passes kl_stop: adapt beta
        and write the rollout's line of ppo_metrics.jsonl."""
        kl_stop, approx_kl = self.config.kl_stop, self.last_update.get("approx_kl", 0.0)
        if kl_stop is not None and approx_kl > kl_stop and self.schedule:
            log.warning("step %d: approx KL %.4f > kl_stop %.4f: the rollout's remaining %d updates are skipped",
                        step, approx_kl, kl_stop, len(self.schedule))
            self.schedule, self.cycle["early_stopped"] = [], 1
        if not self.schedule:
            self.end_rollout(step)

    def end_rollout(self, step: int) -> None:
        config, updates = self.config, self.cycle.pop("updates")
        record = {"step": step, **self.rollout_stats, "updates": updates,
                  **{name: value / updates if name != "early_stopped" else value for name, value in self.cycle.items()}}
        if config.target_kl is not None:
            self.beta = adaptive_kl_coef(self.beta, self.rollout_stats["kl"], config.target_kl, config.kl_horizon,
                                         len(self.rollout_rows["input_ids"]))
        if distributed.is_main():
            append_jsonl(Path(config.output_dir) / "ppo_metrics.jsonl", [record])

    # ------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """The adapted beta; in the middle of a rollout's updates, the rollout, the updates still to run and the
        figures gathered so far, so a resumed run finishes the rollout as the uninterrupted run does."""
        if not self.schedule:
            return {"beta": self.beta}
        return {"beta": self.beta, "rollout_rows": self.rollout_rows, "schedule": self.schedule,
                "rollout_stats": self.rollout_stats, "cycle": self.cycle}

    def load_state_dict(self, state: dict, step: int) -> None:
        self.beta = state.get("beta", self.beta)
        if state.get("schedule"):
            self.rollout_rows, self.schedule = state["rollout_rows"], state["schedule"]
            self.rollout_stats, self.cycle = state["rollout_stats"], state["cycle"]


# ------------------------------------------------------------------------------------------------------ set-up
def train_ppo(config: PPOConfig, callbacks=None) -> dict:
    """Run PPO end to end; returns the evaluation dict (also in output_dir/evaluation.json)."""
    rollout_size = config.batch_size * config.grad_accum_steps
    if config.num_minibatches > rollout_size:
        raise ConfigError(f"num_minibatches={config.num_minibatches} exceeds the {rollout_size} completions of a "
                          "rollout (batch_size x grad_accum_steps)")
    policy, tokenizer, setup = load_online_rl(config, reward_specs=lambda task: reward_specs(config, task))
    note_reward_tokenizers(setup.reward, tokenizer)
    reference = ReferencePolicy(policy) if config.beta > 0 or config.target_kl is not None else None
    model = PolicyAndValue(policy, *build_critic(config, policy, tokenizer))
    method = PPOMethod(config, tokenizer, setup, reference)
    return train_online(config, model, tokenizer, method, callbacks, PolicyAndValueFiles(model, tokenizer, config.model))


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
