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
from dataclasses import dataclass, field
from typing import Literal

import torch

from posttrain.data import load_rows, normalize_rows
from posttrain.data.preference import collate_unpaired, tokenize_unpaired
from posttrain.engine import LossOutput
from posttrain.errors import ConfigError
from posttrain.math import masked_sum
from posttrain.math.preference import kto_loss, kto_reference_point
from posttrain.models.forward import token_logps
from posttrain.trainers.common import (
    PolicyTrainingConfig,
    load_policy,
    read_log,
    run_summary,
    train_and_save,
    write_evaluation,
)
from posttrain.trainers.reference import ReferencePolicy, precompute_reference_logps

log = logging.getLogger(__name__)
ACCEPTED_FORMATS = ("unpaired", "preference")


@dataclass
class KTOConfig(PolicyTrainingConfig):
    method: Literal["kto"] = "kto"
    beta: float = field(default=0.1, metadata={"min": 0})
    desirable_weight: float = field(default=1.0, metadata={"min": 0})  # lambda_D
    undesirable_weight: float = field(default=1.0, metadata={"min": 0})  # lambda_U
    precompute_ref_logps: bool = False
    ref_cache_dir: str | None = None
    learning_rate: float = field(default=1e-6, metadata={"min": 0})


class KTOMethod:
    """Batches hold B matched rows (x_i, y_i) then B mismatched rows (x_i, y'_i)."""

    collate = staticmethod(collate_unpaired)

    def __init__(self, config: KTOConfig, reference: ReferencePolicy | None):
        self.config = config
        self.reference = reference

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["desirable"].shape[0]

    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        """z0 over the whole optimizer step (all micro-batches), stored in each batch."""
        with torch.no_grad():
            log_ratios = []
            for batch in micro_batches:
                mismatched = half(batch, second=True)
                logps, mask = token_logps(model, mismatched)
                log_ratios.append(masked_sum(logps.logps - self.reference_token_logps(model, mismatched), mask, -1))
            reference_point = kto_reference_point(torch.cat(log_ratios), torch.zeros(()))
        for batch in micro_batches:
            batch["kl_reference_point"] = reference_point

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        matched = half(batch, second=False)
        stats, mask = token_logps(model, matched)
        logps = masked_sum(stats.logps, mask, -1)
        ref_logps = masked_sum(self.reference_token_logps(model, matched), mask, -1)
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

    def reference_token_logps(self, model, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_token_logps" in rows:  # precomputed
            return rows["ref_token_logps"]
        return self.reference.token_logps(model, rows)


ROW_KEYS = ("input_ids", "attention_mask", "loss_mask", "ref_token_logps")


def half(batch: dict[str, torch.Tensor], second: bool) -> dict[str, torch.Tensor]:
    """The matched (first) or mismatched (second) half of a KTO batch's rows."""
    n = batch["desirable"].shape[0]
    rows = slice(n, 2 * n) if second else slice(0, n)
    return {k: batch[k][rows] for k in ROW_KEYS if k in batch}


def train_kto(config: KTOConfig, callbacks=None) -> dict:
    """Run KTO end to end; returns the evaluation dict (also written to output_dir/evaluation.json)."""
    model, tokenizer = load_policy(config)
    train_examples, eval_examples = load_unpaired_examples(config, tokenizer)
    reference = None
    if config.precompute_ref_logps:
        settings = {"dtype": str(next(model.parameters()).dtype)}
        precompute_reference_logps(model, train_examples + eval_examples, tokenizer.pad_token_id,
                                   config.eval_batch_size, settings, config.ref_cache_dir)
    else:
        reference = ReferencePolicy(model)
    method = KTOMethod(config, reference)
    state = train_and_save(config, model, tokenizer, method, train_examples, eval_examples, callbacks)
    return write_evaluation(config, kto_evaluation(config, model, state), model, tokenizer)


def load_unpaired_examples(config: KTOConfig, tokenizer):
    data = config.data
    if not data.path:
        raise ConfigError("data.path is required: rows with prompt, completion and label (or prompt, chosen, rejected)")
    fmt, rows = normalize_rows(load_rows(data.path, data.split), data, ACCEPTED_FORMATS)
    train, _ = tokenize_unpaired(rows, fmt, tokenizer, data)
    eval_examples = []
    if data.eval_path or data.eval_split:
        eval_fmt, eval_rows = normalize_rows(load_rows(data.eval_path or data.path, data.eval_split), data,
                                             ACCEPTED_FORMATS)
        eval_examples, _ = tokenize_unpaired(eval_rows, eval_fmt, tokenizer, data)
    kinds = sum(e.desirable for e in train)
    log.warning("KTO train: %d desirable, %d undesirable examples", kinds, len(train) - kinds)
    return train, eval_examples


def kto_evaluation(config: KTOConfig, model, state: dict) -> dict:
    """evaluation.json: held-out mean implicit reward of desirable and undesirable examples and their gap."""
    evals = [r for r in read_log(config.output_dir) if "eval_loss" in r]
    result = run_summary(config, model, state)

    def summary(record: dict) -> dict:
        desirable = record["eval_rewards/desirable_sum"] / max(record["eval_count/desirable"], 1e-12)
        undesirable = record["eval_rewards/undesirable_sum"] / max(record["eval_count/undesirable"], 1e-12)
        return {"loss": record["eval_loss"], "reward_desirable": desirable, "reward_undesirable": undesirable,
                "reward_gap": desirable - undesirable, "kl": record["eval_kl"]}

    if evals:
        result["metrics"] = {k: {"value": v, "n_examples": evals[-1]["eval_items"]} for k, v in summary(evals[-1]).items()}
        if evals[0]["step"] == 0 and state["step"] > 0:
            result["baseline"] = summary(evals[0])
    return result
