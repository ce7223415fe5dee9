"""KTO: Kahneman-Tversky optimization from unpaired feedback (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306).

Data: (x, y, desirable?) examples; preference pairs are split into a desirable chosen and an undesirable rejected.

Algorithm (for each optimizer step, on B examples):
    1. z0 = max(0, mean over the step of [log pi(y'|x) - log pi_ref(y'|x)]) with y' another example's completion:
       a batch estimate of KL(pi || pi_ref), no gradient (computed once per optimizer step, so accumulation does
       not change it)
    2. r = log pi(y|x) - log pi_ref(y|x) for each example
    3. L = lambda_D (1 - sigma(beta (r - z0))) for desirable y, lambda_U (1 - sigma(beta (z0 - r))) for undesirable y
    4. summed over examples, divided by the step's example count (posttrain.engine), backward, AdamW
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data import load_examples
from posttrain.data.preference import collate_unpaired
from posttrain.engine import LossOutput, Method, distributed, fsdp
from posttrain.math import masked_sum
from posttrain.math.preference import kto_loss, kto_reference_point
from posttrain.models.forward import token_logps
from posttrain.trainers.common import (
    PolicyTrainingConfig,
    TrainingRun,
    evaluation_summary,
    load_policy,
    train_and_save,
    write_evaluation,
)
from posttrain.trainers.reference import ReferencePolicy, precompute_reference_logps, reference_token_logps

log = logging.getLogger(__name__)


@dataclass
class KTOConfig(PolicyTrainingConfig):
    method: Literal["kto"] = option("kto", help="Kahneman-Tversky optimization on unpaired completions labelled "
                                                "desirable or undesirable")
    beta: float = option(0.1, above=0, help="scale of the implicit reward log pi/pi_ref inside the value function "
                                             "(0 would train nothing)")
    desirable_weight: float = option(1.0, min=0, help="lambda_D: the loss weight of desirable completions")
    undesirable_weight: float = option(1.0, min=0, help="lambda_U: the loss weight of undesirable completions")
    precompute_ref_logps: bool = option(False, help="score the data under pi_ref once, cache it on disk, never load "
                                                    "pi_ref again")
    ref_cache_dir: str | None = option(None, help="folder of the precompute_ref_logps cache; None: "
                                                  "$POSTTRAIN_CACHE/ref_logps")
    learning_rate: float = option(1e-6, min=0, help="AdamW's peak learning rate, reached after warmup_steps")


class KTOMethod(Method):
    """Batches hold B matched rows (x_i, y_i) then B mismatched rows (x_i, y'_i)."""

    collate = staticmethod(collate_unpaired)
    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed)

    def __init__(self, config: KTOConfig, reference: ReferencePolicy | None):
        self.config = config
        self.reference = reference

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["desirable"].shape[0]

    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]], step: int) -> None:
        """z0 over the whole optimizer step (all micro-batches), stored in each batch."""
        with torch.no_grad():
            log_ratios = []
            # FSDP gathers the weights in every pass: a rank with fewer micro-batches (a short last step) scores its
            # last one again, unused, so that every rank runs as many
            extra = fsdp.missing_passes(len(micro_batches)) if model.training and fsdp.is_sharded(model) else 0
            for batch in micro_batches + micro_batches[-1:] * extra:
                mismatched = half(batch, second=True)
                logps, mask = token_logps(model, mismatched)
                log_ratios.append(masked_sum(logps.logps - reference_token_logps(self.reference, model, mismatched), mask, -1))
            log_ratios = torch.cat(log_ratios[: len(micro_batches)])
            if model.training:  # under torchrun: every rank's share of the step, gathered in rank order; evaluation
                # batches (split over ranks) keep their own, as a single process's do
                log_ratios = torch.cat(distributed.gather_tensors(log_ratios))
            reference_point = kto_reference_point(log_ratios, torch.zeros(()))
        for batch in micro_batches:
            batch["kl_reference_point"] = reference_point

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        matched = half(batch, second=False)
        stats, mask = token_logps(model, matched)
        logps = masked_sum(stats.logps, mask, -1)
        ref_logps = masked_sum(reference_token_logps(self.reference, model, matched), mask, -1)
        desirable = batch["desirable"]
        out = kto_loss(logps, ref_logps, desirable, batch["kl_reference_point"], self.config.beta,
                       self.config.desirable_weight, self.config.undesirable_weight)
        # sums over examples (the engine divides by the example count); per-kind means are ratios of two of them
        metrics = {
            "kl": float(batch["kl_reference_point"]) * len(desirable),
            "rewards/desirable_sum": float(out.chosen_rewards.nan_to_num(0.0).sum()),
            "rewards/undesirable_sum": float(out.rejected_rewards.nan_to_num(0.0).sum()),
            "count/desirable": float(desirable.sum()),
            "count/undesirable": float((~desirable).sum()),
        }
        return LossOutput(out.losses.sum(), metrics)


ROW_KEYS = ("input_ids", "attention_mask", "loss_mask", "ref_token_logps")


def half(batch: dict[str, torch.Tensor], second: bool) -> dict[str, torch.Tensor]:
    """The matched (first) or mismatched (second) half of a KTO batch's rows."""
    n = batch["desirable"].shape[0]
    rows = slice(n, 2 * n) if second else slice(0, n)
    return {k: batch[k][rows] for k in ROW_KEYS if k in batch}


def train_kto(config: KTOConfig, callbacks=None) -> dict:
    """Run KTO end to end; returns the evaluation dict (also written to output_dir/evaluation.json)."""
    model, tokenizer = load_policy(config)
    train_examples, eval_examples = load_examples(config.data, tokenizer, "unpaired")
    desirable = sum(e.desirable for e in train_examples)
    log.warning("KTO train: %d desirable, %d undesirable examples", desirable, len(train_examples) - desirable)
    reference = None
    if config.precompute_ref_logps:
        settings = {"dtype": str(next(model.parameters()).dtype)}
        precompute_reference_logps(model, train_examples + eval_examples, tokenizer.pad_token_id,
                                   config.eval_batch_size, settings, config.ref_cache_dir)
    else:
        reference = ReferencePolicy(model)
    run = train_and_save(config, model, tokenizer, KTOMethod(config, reference), train_examples, eval_examples,
                         callbacks)
    return write_evaluation(config, kto_evaluation(config, model, run), model, tokenizer)


def kto_evaluation(config: KTOConfig, model, run: TrainingRun) -> dict:
    """evaluation.json: held-out mean implicit reward of desirable and undesirable examples and their gap."""

    def summary(record: dict) -> dict:
        desirable = record["eval_rewards/desirable_sum"] / max(record["eval_count/desirable"], 1e-12)
        undesirable = record["eval_rewards/undesirable_sum"] / max(record["eval_count/undesirable"], 1e-12)
        return {"loss": record["eval_loss"], "reward_desirable": desirable, "reward_undesirable": undesirable,
                "reward_gap": desirable - undesirable, "kl": record["eval_kl"]}

    return evaluation_summary(config, model, run, summary, "n_examples")
