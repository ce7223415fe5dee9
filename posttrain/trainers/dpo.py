"""Direct preference optimization and its reference-free relatives: DPO (sigmoid, hinge, IPO, robust, cDPO, + RPO's
NLL term), SimPO and ORPO. One trainer, one loss table (posttrain.math.preference).

Algorithm (for each optimizer step, on B preference pairs (x, y_w, y_l)):
    1. one forward pass over the 2B sequences [x + y_w ; x + y_l] -> summed completion log-probs log pi(y|x)
    2. DPO family: the same under pi_ref (cached, adapters off, or a frozen copy), then
           L = loss_type(h),  h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
       SimPO / ORPO: no reference; length-normalised log-probs
    3. the loss summed over pairs, divided by the step's pair count (posttrain.engine), backward, AdamW
Logged: implicit rewards of chosen/rejected, their margin and accuracy, mean log-probs, KL to pi_ref on chosen.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from posttrain.data import load_rows, normalize_rows
from posttrain.data.preference import (
    collate_pairs,
    collate_pairs_packed,
    count_sequences,
    sequence_sums,
    tokenize_pairs,
)
from posttrain.engine import LossOutput
from posttrain.errors import ConfigError
from posttrain.io import atomic_write_text
from posttrain.math import kl_estimate
from posttrain.math.preference import (
    LENGTH_NORMALISED_DPO,
    PreferenceLoss,
    chosen_nll,
    dpo_loss,
    orpo_loss,
    simpo_loss,
)
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
REFERENCE_FREE = {"simpo", "orpo"}


@dataclass
class DPOConfig(PolicyTrainingConfig):
    method: Literal["dpo", "simpo", "orpo"] = "dpo"
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "cdpo"] = "sigmoid"  # DPO only
    beta: float = field(default=0.1, metadata={"min": 0})  # DPO beta / IPO tau / SimPO beta
    label_smoothing: float = field(default=0.0, metadata={"min": 0, "max": 0.5})  # robust, cdpo: label-noise eps
    rpo_alpha: float | None = field(default=None, metadata={"min": 0})  # DPO + alpha * NLL(chosen) (RPO)
    gamma: float = field(default=0.5, metadata={"min": 0})  # SimPO target margin
    orpo_lambda: float = field(default=0.1, metadata={"min": 0})  # ORPO weight of the odds-ratio term
    precompute_ref_logps: bool = False  # score the data under pi_ref once, cache on disk, never load pi_ref again
    # pairs back to back in a few rows, each prompt once, chosen and rejected as branches under a 4D mask (same log-probs)
    pack_pairs: bool = True
    ref_cache_dir: str | None = None  # default: $POSTTRAIN_CACHE/ref_logps
    eval_generations: int = field(default=0, metadata={"min": 0})  # greedy answers to N eval prompts, before/after
    max_new_tokens: int = field(default=64, metadata={"min": 1})  # for eval_generations
    learning_rate: float = field(default=1e-6, metadata={"min": 0})


class PreferenceMethod:
    """The loss the engine runs for B pairs: the method's per-pair losses summed, and metric sums over pairs."""

    def __init__(self, config: DPOConfig, reference: ReferencePolicy | None):
        self.config = config
        self.reference = reference
        self.collate = collate_pairs_packed if config.pack_pairs else collate_pairs

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return count_sequences(batch) // 2

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        config = self.config
        stats, mask = token_logps(model, batch)  # (2B, T-1): chosen rows, then rejected rows (or one packed row)
        lengths = sequence_sums(mask.to(stats.logps.dtype), mask, batch)
        chosen_logps, rejected_logps = sequence_sums(stats.logps, mask, batch).chunk(2)
        chosen_lengths, rejected_lengths = lengths.chunk(2)
        metrics: dict[str, float] = {}
        if config.method == "simpo":
            out = simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, config.beta, config.gamma)
        elif config.method == "orpo":
            out = orpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, config.orpo_lambda)
        else:
            ref_token_logps = self.reference_token_logps(model, batch)
            ref_chosen_logps, ref_rejected_logps = sequence_sums(ref_token_logps, mask, batch).chunk(2)
            scores = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
            if config.loss_type in LENGTH_NORMALISED_DPO:
                scores = tuple(s / n for s, n in zip(scores, (chosen_lengths, rejected_lengths) * 2))
            out = dpo_loss(*scores, config.beta, config.loss_type, config.label_smoothing)
            if config.rpo_alpha:
                out = out._replace(losses=out.losses + config.rpo_alpha * chosen_nll(chosen_logps, chosen_lengths))
            chosen_kl = sequence_sums(kl_estimate(stats.logps.detach(), ref_token_logps, "k3"), mask, batch).chunk(2)[0]
            metrics["kl/chosen"] = float((chosen_kl / chosen_lengths).sum())  # mean per token, summed over pairs
        metrics.update(pair_metrics(out, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths))
        return LossOutput(out.losses.sum(), metrics)

    def reference_token_logps(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_token_logps" in batch:  # precomputed
            return batch["ref_token_logps"]
        return self.reference.token_logps(model, batch)


def pair_metrics(out: PreferenceLoss, chosen_logps, rejected_logps, chosen_lengths, rejected_lengths) -> dict:
    """Sums over the batch's pairs (the engine divides by the pair count). Accuracy counts a tie as half right, so a
    model that has not moved from its reference scores 0.5, chance."""
    margin = out.chosen_rewards - out.rejected_rewards
    accuracy = (margin > 0).float() + 0.5 * (margin == 0).float()
    return {
        "rewards/chosen": float(out.chosen_rewards.sum()),
        "rewards/rejected": float(out.rejected_rewards.sum()),
        "rewards/margin": float(margin.sum()),
        "rewards/accuracy": float(accuracy.sum()),
        "logps/chosen": float(chosen_logps.detach().sum()),
        "logps/rejected": float(rejected_logps.detach().sum()),
        "length/chosen": float(chosen_lengths.sum()),
        "length/rejected": float(rejected_lengths.sum()),
    }


def train_dpo(config: DPOConfig, callbacks=None) -> dict:
    """Run DPO / SimPO / ORPO end to end; returns the evaluation dict (also written to output_dir/evaluation.json)."""
    if config.loss_type == "robust" and config.label_smoothing >= 0.5:
        raise ConfigError("label_smoothing must be < 0.5 for loss_type=robust (the loss divides by 1 - 2 eps)")
    model, tokenizer = load_policy(config)
    train_examples, eval_examples = load_pair_examples(config, tokenizer)
    needs_reference = config.method not in REFERENCE_FREE
    reference = None
    if needs_reference and config.precompute_ref_logps:
        # before the first update the policy *is* the reference: score with it, then never hold a second model
        settings = {"dtype": str(next(model.parameters()).dtype)}
        precompute_reference_logps(model, train_examples + eval_examples, tokenizer.pad_token_id,
                                   config.eval_batch_size, settings, config.ref_cache_dir)
    elif needs_reference:
        reference = ReferencePolicy(model)
    before = generate_answers(config, model, tokenizer) if config.eval_generations else None

    method = PreferenceMethod(config, reference)
    state = train_and_save(config, model, tokenizer, method, train_examples, eval_examples, callbacks)
    evaluation = preference_evaluation(config, model, state)
    if before is not None:
        evaluation["generations"] = compare_generations(config, before, generate_answers(config, model, tokenizer))
    return write_evaluation(config, evaluation, model, tokenizer)


def load_pair_examples(config: DPOConfig, tokenizer):
    data = config.data
    if not data.path:
        raise ConfigError("data.path is required: preference rows with prompt, chosen and rejected columns")
    _, rows = normalize_rows(load_rows(data.path, data.split), data, ("preference",))
    train, stats = tokenize_pairs(rows, tokenizer, data)
    log.warning(stats.report("train"))
    eval_examples = []
    if data.eval_path or data.eval_split:
        _, eval_rows = normalize_rows(load_rows(data.eval_path or data.path, data.eval_split), data, ("preference",))
        eval_examples, eval_stats = tokenize_pairs(eval_rows, tokenizer, data)
        log.warning(eval_stats.report("eval"))
    return train, eval_examples


def preference_evaluation(config, model, state: dict) -> dict:
    """evaluation.json: held-out preference accuracy and margin, chosen-completion perplexity, KL to pi_ref; the
    step-0 evaluation is the baseline."""
    evals = [r for r in read_log(config.output_dir) if "eval_loss" in r]
    result = run_summary(config, model, state)
    if not evals:
        return result

    def summary(record: dict) -> dict:
        values = {
            "preference_accuracy": record.get("eval_rewards/accuracy"),
            "reward_margin": record.get("eval_rewards/margin"),
            "loss": record["eval_loss"],
            "perplexity_chosen": math.exp(-record["eval_logps/chosen"] / record["eval_length/chosen"]),
        }
        if "eval_kl/chosen" in record:
            values["kl_chosen"] = record["eval_kl/chosen"]
        return values

    last, first = evals[-1], evals[0]
    result["metrics"] = {name: {"value": value, "n_pairs": last["eval_items"]} for name, value in summary(last).items()}
    if first["step"] == 0 and state["step"] > 0:
        result["baseline"] = summary(first)
    return result


def generate_answers(config: DPOConfig, model, tokenizer) -> list[dict]:
    """Greedy answers to the first ``eval_generations`` eval prompts (the behaviour the pairs reward, observed)."""
    from posttrain.generation import generate

    data = config.data
    rows = load_rows(data.eval_path or data.path, data.eval_split or data.split)
    _, rows = normalize_rows(rows, data, ("preference",))
    rows = rows[: config.eval_generations]
    prompts = [r.values["prompt"] for r in rows]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens)
    return [{"prompt": p, "output": o, "chosen": r.values["chosen"]} for p, o, r in zip(prompts, outputs, rows)]


def compare_generations(config: DPOConfig, before: list[dict], after: list[dict]) -> dict:
    """Mean words of the greedy answers before and after training (and the samples file they come from)."""
    path = Path(config.output_dir) / "samples.jsonl"
    atomic_write_text(path, "".join(json.dumps({"prompt": b["prompt"], "chosen": b["chosen"], "before": b["output"],
                                                "after": a["output"]}) + "\n" for b, a in zip(before, after)))

    def words(answers):
        return sum(len(a["output"].split()) for a in answers) / max(len(answers), 1)

    def contains_chosen(answers):  # the preferred answer appears word for word in the model's own answer
        return sum(str(a["chosen"]).strip() in a["output"] for a in answers) / max(len(answers), 1)

    return {"n_prompts": len(before), "mean_words_before": words(before), "mean_words_after": words(after),
            "contains_chosen_before": contains_chosen(before), "contains_chosen_after": contains_chosen(after),
            "samples": str(path)}
