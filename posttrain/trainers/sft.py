"""Supervised fine-tuning (full or LoRA): maximise the likelihood of the completions given their prompts.

    L_SFT(theta) = - (1/|C|) sum_{t in C} log pi_theta(y_t | y_<t)        (C: completion tokens of the step batch)

Algorithm:
    1. load the model (+ LoRA adapters) and tokenize the data with completion masks
    2. for each optimizer step: L_SFT on the step batch, backward, AdamW      (posttrain.engine)
    3. save final/ and write evaluation.json (perplexity on the eval split, before and after)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data import load_examples, pack_examples
from posttrain.engine import LossOutput, Method
from posttrain.math import sft_nll_sum
from posttrain.models.forward import token_logps
from posttrain.models.moe_training import RouterLosses, moe_config
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
class SFTConfig(PolicyTrainingConfig):
    method: Literal["sft"] = option("sft", help="supervised fine-tuning: next-token cross-entropy on the completions")
    learning_rate: float = option(2e-5, min=0, help="AdamW's peak learning rate, reached after warmup_steps")
    router_aux_loss_coef: float | None = option(
        None, min=0, help="mixture-of-experts models only: weight of the load-balancing loss (Switch/GShard, mean over "
                          "layers) added to the loss; None: the model config's router_aux_loss_coef")
    router_z_loss_coef: float = option(0.0, min=0, help="mixture-of-experts models only: weight of the router z-loss "
                                                        "(ST-MoE) added to the loss")


class SFTMethod(Method):
    """The method the engine runs: summed completion NLL, normalised by the step's completion-token count."""

    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed)

    router: RouterLosses | None = None  # a mixture of experts' router losses (posttrain.models.moe_training)

    def __init__(self, router: RouterLosses | None = None):
        self.router = router
        if router is not None:
            self.fsdp = False  # the router hooks are not tested under FSDP

    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]], step: int) -> None:
        if self.router is not None:
            self.router.prepare(model, micro_batches, sum(self.count(b) for b in micro_batches))

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["loss_mask"][:, 1:].sum())

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        if self.router is None:
            stats, mask = token_logps(model, batch)
            nll_sum = sft_nll_sum(stats.logps, mask)
            return LossOutput(nll_sum, {"token_accuracy": float(stats.is_argmax[mask].sum())})
        (stats, mask), aux_sum, router_metrics = self.router.loss(model, batch, lambda: token_logps(model, batch))
        nll_sum = sft_nll_sum(stats.logps, mask)
        return LossOutput(nll_sum + aux_sum, {"token_accuracy": float(stats.is_argmax[mask].sum()),
                                              "nll": float(nll_sum.detach()), **router_metrics})


def train_sft(config: SFTConfig, callbacks=None) -> dict:
    """Run SFT end to end; returns the evaluation dict (also written to ``output_dir/evaluation.json``)."""
    model, tokenizer = load_policy(config)

    train_examples, eval_examples = load_examples(config.data, tokenizer, "sft")
    if config.data.packing:
        train_examples = pack_examples(train_examples, config.data.max_length)

    moe = moe_config(model)
    router = RouterLosses(moe, config.router_aux_loss_coef, config.router_z_loss_coef) if moe else None
    run = train_and_save(config, model, tokenizer, SFTMethod(router), train_examples, eval_examples, callbacks)
    return write_evaluation(config, sft_evaluation(config, run, model), model, tokenizer)


def sft_evaluation(config: SFTConfig, run: TrainingRun, model) -> dict:
    """evaluation.json: held-out perplexity after training, next to the step-0 baseline."""
    def summary(record: dict) -> dict:
        return {"perplexity": math.exp(record["eval_loss"]), "eval_loss": record["eval_loss"],
                "token_accuracy": record.get("eval_token_accuracy")}

    result = evaluation_summary(config, model, run, summary, "n_tokens", baseline_names=("perplexity", "token_accuracy"))
    if "perplexity" in result["metrics"]:
        result["metrics"]["perplexity"]["split"] = config.data.eval_split or config.data.eval_path
    return result
