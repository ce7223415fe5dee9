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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from posttrain.data import DataConfig, load_rows, normalize_rows, pack_examples, tokenize_sft
from posttrain.engine import LossOutput
from posttrain.errors import ConfigError
from posttrain.math import sft_nll_sum
from posttrain.models.forward import token_logps
from posttrain.trainers.common import (
    PolicyTrainingConfig,
    load_policy,
    read_log,
    run_summary,
    train_and_save,
    write_evaluation,
)

log = logging.getLogger(__name__)


@dataclass
class SFTConfig(PolicyTrainingConfig):
    method: Literal["sft"] = "sft"
    learning_rate: float = field(default=2e-5, metadata={"min": 0})


class SFTLoss:
    """The method the engine runs: summed completion NLL, normalised by the step's completion-token count."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["loss_mask"][:, 1:].sum())

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        stats, mask = token_logps(model, batch)
        nll_sum = sft_nll_sum(stats.logps, mask)
        return LossOutput(nll_sum, {"token_accuracy": float(stats.is_argmax[mask].sum())})


def train_sft(config: SFTConfig, callbacks=None) -> dict:
    """Run SFT end to end; returns the evaluation dict (also written to ``output_dir/evaluation.json``)."""
    model, tokenizer = load_policy(config)

    train_examples, eval_examples = load_sft_examples(config.data, tokenizer)
    if config.data.packing:
        train_examples = pack_examples(train_examples, config.data.max_length)

    state = train_and_save(config, model, tokenizer, SFTLoss(), train_examples, eval_examples, callbacks)
    return write_evaluation(config, sft_evaluation(config, Path(config.output_dir), state, model), model, tokenizer)


def load_sft_examples(data: DataConfig, tokenizer):
    """Tokenized train and eval examples; the eval set comes from eval_path and/or eval_split (or is empty)."""
    if not data.path:
        raise ConfigError("data.path is required: a .jsonl/.json/.csv/.parquet file, a dataset folder or a hub id")
    accepted = ("messages", "prompt_completion", "text")
    fmt, rows = normalize_rows(load_rows(data.path, data.split), data, accepted)
    train, stats = tokenize_sft(rows, fmt, tokenizer, data)
    log.warning(stats.report("train"))
    eval_examples = []
    if data.eval_path or data.eval_split:
        eval_fmt, eval_rows = normalize_rows(load_rows(data.eval_path or data.path, data.eval_split), data, accepted)
        eval_examples, eval_stats = tokenize_sft(eval_rows, eval_fmt, tokenizer, data)
        log.warning(eval_stats.report("eval"))
    return train, eval_examples


def sft_evaluation(config: SFTConfig, output_dir: Path, state: dict, model) -> dict:
    """evaluation.json: held-out perplexity after training, next to the step-0 baseline from log_history.jsonl."""
    evals = [r for r in read_log(output_dir) if "eval_loss" in r]
    result = run_summary(config, model, state)
    if evals:
        last, first = evals[-1], evals[0]
        result["metrics"]["perplexity"] = {"value": math.exp(last["eval_loss"]), "n_tokens": last["eval_items"],
                                           "split": config.data.eval_split or config.data.eval_path}
        result["metrics"]["eval_loss"] = {"value": last["eval_loss"], "n_tokens": last["eval_items"]}
        result["metrics"]["token_accuracy"] = {"value": last.get("eval_token_accuracy"), "n_tokens": last["eval_items"]}
        if first["step"] == 0 and state["step"] > 0:
            result["baseline"] = {"perplexity": math.exp(first["eval_loss"]),
                                  "token_accuracy": first.get("eval_token_accuracy")}
    return result
