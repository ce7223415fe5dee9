"""Reward modelling: a scalar score r(x, y) learned from preference pairs with the Bradley-Terry loss, the first
stage of RLHF (Stiennon et al. 2020; Ouyang et al. 2022). The trained model is a reward function for GRPO / RLOO
(``rewards: [{model: runs/reward/final}]``, posttrain.rollout.rewards).

Algorithm (for each optimizer step, on B preference pairs (x, y_w, y_l), optional margins m):
    1. one forward pass over the 2B sequences [x + y_w ; x + y_l] (padded, chosen rows first); the score head at
       each row's last real token gives r_w = r(x, y_w) and r_l = r(x, y_l)
    2. L = -log sigma(r_w - r_l - m)            Bradley-Terry (posttrain.math.bradley_terry_loss)
           + c (r_w + r_l)^2                    with center_rewards_coefficient c (Eisenstein et al. 2023)
    3. the loss summed over pairs, divided by the step's pair count (posttrain.engine), backward, AdamW
Logged: mean chosen and rejected scores, their margin, and accuracy (the share of pairs with r_w > r_l).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data import load_examples
from posttrain.data.preference import collate_pairs
from posttrain.engine import LossOutput, Method
from posttrain.errors import ConfigError, DataError
from posttrain.math import bradley_terry_loss, reward_centering_penalty
from posttrain.math.preference import reward_metric_sums
from posttrain.models.reward_model import sequence_scores
from posttrain.trainers.common import (
    PolicyTrainingConfig,
    TrainingRun,
    evaluation_summary,
    load_policy,
    train_and_save,
    write_evaluation,
)

log = logging.getLogger(__name__)


@dataclass
class RewardConfig(PolicyTrainingConfig):
    method: Literal["reward"] = option("reward", help="a reward model: a scalar head trained on preference pairs "
                                                      "(Bradley-Terry loss)")
    center_rewards_coefficient: float | None = option(
        None, min=0, help="weight c of the centering penalty c (r_w + r_l)^2 (TRL suggests 0.01); None: no penalty")
    learning_rate: float = option(1e-5, min=0, help="AdamW's peak learning rate, reached after warmup_steps")


class RewardModelMethod(Method):
    """The loss the engine runs for B pairs: Bradley-Terry (+ centering) summed over pairs, and metric sums."""

    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed)

    def __init__(self, config: RewardConfig):
        self.config = config
        self.collate = collate_pairs  # padded: one score position per row, at its last real token

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        chosen_rewards, rejected_rewards = sequence_scores(model, batch).chunk(2)  # (B,), (B,)
        losses = bradley_terry_loss(chosen_rewards, rejected_rewards, batch.get("margin"))
        if self.config.center_rewards_coefficient:
            losses = losses + self.config.center_rewards_coefficient * reward_centering_penalty(chosen_rewards,
                                                                                              rejected_rewards)
        return LossOutput(losses.sum(), reward_metric_sums(chosen_rewards.detach(), rejected_rewards.detach()))


def train_reward(config: RewardConfig, callbacks=None) -> dict:
    """Train a reward model end to end; returns the evaluation dict (also written to output_dir/evaluation.json)."""
    if config.quantization != "none":
        raise ConfigError("quantization is not supported for reward models yet: set quantization=none")
    if config.eval_suite is not None:
        raise ConfigError("eval_suite runs the harness on a causal LM; a reward model's evaluation is its held-out "
                          "pair accuracy (evaluation.json). To use it in a suite, name its final/ folder in a "
                          "`reward` or `preference_accuracy` entry (docs/eval.md)")
    model, tokenizer = load_policy(config, reward_model=True)
    train_examples, eval_examples = load_examples(config.data, tokenizer, "pairs")
    for name, examples in (("train", train_examples), ("eval", eval_examples)):
        with_margin = sum(e.margin is not None for e in examples)
        if 0 < with_margin < len(examples):
            first = next(e.where for e in examples if e.margin is None)
            raise DataError(f"{name} data: {with_margin} of {len(examples)} pairs have a margin, {first} has none; "
                            "give every pair a margin or none")
    run = train_and_save(config, model, tokenizer, RewardModelMethod(config), train_examples, eval_examples, callbacks)
    return write_evaluation(config, reward_evaluation(config, model, run))


def reward_evaluation(config: RewardConfig, model, run: TrainingRun) -> dict:
    """evaluation.json: held-out pair accuracy, margin and mean scores; the step-0 evaluation is the baseline.
    ``reward_model`` is the folder to point a reward spec (or transformers) at: ``final/merged`` when LoRA saved
    one, else ``final``."""

    def summary(record: dict) -> dict:
        return {"preference_accuracy": record["eval_rewards/accuracy"], "reward_margin": record["eval_rewards/margin"],
                "reward_chosen": record["eval_rewards/chosen"], "reward_rejected": record["eval_rewards/rejected"],
                "loss": record["eval_loss"]}

    final = Path(config.output_dir) / "final"
    result = evaluation_summary(config, model, run, summary, "n_pairs")
    result["reward_model"] = str(final / "merged" if (final / "merged").is_dir() else final)
    return result
