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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data import load_examples, load_rows, normalize_rows
from posttrain.data.preference import collate_pairs, collate_pairs_packed, count_sequences, sequence_sums
from posttrain.engine import LossOutput, Method, distributed
from posttrain.errors import ConfigError
from posttrain.io import atomic_write_text
from posttrain.math import kl_estimate
from posttrain.math.preference import (
    LENGTH_NORMALISED_DPO,
    chosen_nll,
    dpo_loss,
    orpo_loss,
    reward_metric_sums,
    simpo_loss,
)
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
# the reference-free methods' per-pair losses, from the summed log-probs and lengths of chosen and rejected
REFERENCE_FREE_LOSSES = {
    "simpo": lambda chosen, rejected, chosen_lengths, rejected_lengths, config: simpo_loss(
        chosen, rejected, chosen_lengths, rejected_lengths, config.beta, config.gamma),
    "orpo": lambda chosen, rejected, chosen_lengths, rejected_lengths, config: orpo_loss(
        chosen, rejected, chosen_lengths, rejected_lengths, config.orpo_lambda),
}
SMOOTHED_DPO_LOSSES = ("robust", "cdpo")  # the loss types that read label_smoothing


@dataclass
class DPOConfig(PolicyTrainingConfig):
    method: Literal["dpo", "simpo", "orpo"] = option("dpo", help="dpo (against a reference model), or the "
                                                                 "reference-free simpo or orpo")
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "cdpo"] = option(
        "sigmoid", help="DPO's loss of the margin h (method dpo only): sigmoid (DPO), hinge, ipo, robust or cdpo "
                        "(label noise)")
    beta: float = option(0.1, above=0, help="DPO beta / IPO tau / SimPO beta: the scale of the implicit reward "
                                             "(0 would train nothing, and IPO divides by it)")
    label_smoothing: float = option(0.0, min=0, max=0.5, help="robust, cdpo: the assumed share of flipped labels "
                                                              "(epsilon)")
    rpo_alpha: float | None = option(None, min=0, help="add alpha x NLL of the chosen completion to the DPO loss "
                                                       "(RPO); None: no NLL term")
    gamma: float = option(0.5, min=0, help="SimPO's target reward margin")
    orpo_lambda: float = option(0.1, min=0, help="ORPO's weight of the odds-ratio term (added to the chosen NLL)")
    precompute_ref_logps: bool = option(False, help="score the data under pi_ref once, cache it on disk, never load "
                                                    "pi_ref again")
    pack_pairs: bool = option(True, help="pairs back to back in a few rows, each prompt once, chosen and rejected as "
                                         "branches under a 4D mask (same log-probs as padded rows, fewer positions)")
    ref_cache_dir: str | None = option(None, help="folder of the precompute_ref_logps cache; None: "
                                                  "$POSTTRAIN_CACHE/ref_logps")
    eval_generations: int = option(0, min=0, help="greedy answers to the first N eval prompts, written before and "
                                                  "after training; 0: none")
    max_new_tokens: int = option(64, min=1, help="longest answer of eval_generations, in tokens")
    learning_rate: float = option(1e-6, min=0, help="AdamW's peak learning rate, reached after warmup_steps")


class PreferenceMethod(Method):
    """The loss the engine runs for B pairs: the method's per-pair losses summed, and metric sums over pairs."""

    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed)

    def __init__(self, config: DPOConfig, reference: ReferencePolicy | None):
        self.config = config
        self.reference = reference
        self.collate = collate_pairs_packed if config.pack_pairs else collate_pairs
        self.outputs = ("samples.jsonl",) if config.eval_generations else ()

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return count_sequences(batch) // 2

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        config = self.config
        stats, mask = token_logps(model, batch)  # (2B, T-1): chosen rows, then rejected rows (or one packed row)
        lengths = sequence_sums(mask.to(stats.logps.dtype), mask, batch)
        chosen_logps, rejected_logps = sequence_sums(stats.logps, mask, batch).chunk(2)
        chosen_lengths, rejected_lengths = lengths.chunk(2)
        metrics: dict[str, float] = {}
        if config.method in REFERENCE_FREE_LOSSES:
            out = REFERENCE_FREE_LOSSES[config.method](chosen_logps, rejected_logps, chosen_lengths, rejected_lengths,
                                                       config)
        else:
            ref_token_logps = reference_token_logps(self.reference, model, batch)
            ref_chosen_logps, ref_rejected_logps = sequence_sums(ref_token_logps, mask, batch).chunk(2)
            scores = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
            if config.loss_type in LENGTH_NORMALISED_DPO:
                scores = tuple(s / n for s, n in zip(scores, (chosen_lengths, rejected_lengths) * 2))
            out = dpo_loss(*scores, config.beta, config.loss_type, config.label_smoothing)
            if config.rpo_alpha:
                out = out._replace(losses=out.losses + config.rpo_alpha * chosen_nll(chosen_logps, chosen_lengths))
            chosen_kl = sequence_sums(kl_estimate(stats.logps.detach(), ref_token_logps, "k3"), mask, batch).chunk(2)[0]
            metrics["kl/chosen"] = float((chosen_kl / chosen_lengths).sum())  # mean per token, summed over pairs
        metrics.update(reward_metric_sums(out.chosen_rewards, out.rejected_rewards))
        metrics.update({
            "logps/chosen": float(chosen_logps.detach().sum()),
            "logps/rejected": float(rejected_logps.detach().sum()),
            "length/chosen": float(chosen_lengths.sum()),
            "length/rejected": float(rejected_lengths.sum()),
        })
        return LossOutput(out.losses.sum(), metrics)


def train_dpo(config: DPOConfig, callbacks=None) -> dict:
    """Run DPO / SimPO / ORPO end to end; returns the evaluation dict (also written to output_dir/evaluation.json)."""
    if config.label_smoothing and (config.method != "dpo" or config.loss_type not in SMOOTHED_DPO_LOSSES):
        raise ConfigError(f"label_smoothing={config.label_smoothing} is read only by method=dpo with loss_type "
                          f"{' or '.join(SMOOTHED_DPO_LOSSES)} (got method={config.method}, loss_type={config.loss_type})")
    if config.loss_type == "robust" and config.label_smoothing >= 0.5:
        raise ConfigError("label_smoothing must be < 0.5 for loss_type=robust (the loss divides by 1 - 2 eps)")
    model, tokenizer = load_policy(config)
    train_examples, eval_examples = load_examples(config.data, tokenizer, "pairs")
    reference = None
    if config.method not in REFERENCE_FREE_LOSSES and config.precompute_ref_logps:
        # before the first update the policy *is* the reference: score with it, then never hold a second model
        settings = {"dtype": str(next(model.parameters()).dtype)}
        precompute_reference_logps(model, train_examples + eval_examples, tokenizer.pad_token_id,
                                   config.eval_batch_size, settings, config.ref_cache_dir)
    elif config.method not in REFERENCE_FREE_LOSSES:
        reference = ReferencePolicy(model)
    before = generate_answers(config, model, tokenizer) if config.eval_generations else None
    method = PreferenceMethod(config, reference)
    run = train_and_save(config, model, tokenizer, method, train_examples, eval_examples, callbacks)
    evaluation = preference_evaluation(config, model, run)
    if before is not None:
        evaluation["generations"] = compare_generations(config, before, generate_answers(config, model, tokenizer))
    return write_evaluation(config, evaluation, model, tokenizer)


def preference_evaluation(config, model, run: TrainingRun) -> dict:
    """evaluation.json: held-out preference accuracy and margin, chosen-completion perplexity, KL to pi_ref; the
    step-0 evaluation is the baseline."""

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

    return evaluation_summary(config, model, run, summary, "n_pairs")


def generate_answers(config: DPOConfig, model, tokenizer) -> list[dict]:
    """Greedy answers to the first ``eval_generations`` eval prompts (the behaviour the pairs reward, observed)."""
    from posttrain.rollout.generate import generate

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
    if distributed.is_main():  # under torchrun every rank generated the same answers; rank 0 writes them
        atomic_write_text(path, "".join(json.dumps({"prompt": b["prompt"], "chosen": b["chosen"],
                                                    "before": b["output"], "after": a["output"]}) + "\n"
                                        for b, a in zip(before, after)))

    def words(answers):
        return sum(len(a["output"].split()) for a in answers) / max(len(answers), 1)

    def contains_chosen(answers):  # the preferred answer appears word for word in the model's own answer
        return sum(str(a["chosen"]).strip() in a["output"] for a in answers) / max(len(answers), 1)

    return {"n_prompts": len(before), "mean_words_before": words(before), "mean_words_after": words(after),
            "contains_chosen_before": contains_chosen(before), "contains_chosen_after": contains_chosen(after),
            "samples": str(path)}
