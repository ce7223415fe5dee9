"""What every trainer that fine-tunes one causal LM shares: the model part of its config, loading the policy (with
LoRA), reading its own log, and the output contract's final steps."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import config_to_dict
from posttrain.data import DataConfig
from posttrain.engine import Engine, EngineConfig
from posttrain.errors import ConfigError
from posttrain.io import atomic_write_text
from posttrain.models import LoraSettings, apply_lora, load_model, save_model

log = logging.getLogger(__name__)


@dataclass
class PolicyTrainingConfig(EngineConfig):
    model: str = "smollm2-135m-instruct"  # built-in name, local HF folder, or hub id
    dtype: str = "auto"  # auto: fp32 weights (bf16 autocast on CUDA comes from `precision`); LoRA base: bf16 on CUDA
    device: str = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"  # QLoRA: 4bit + lora.enabled
    trust_remote_code: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    # The harness's suite (`posttrain eval`: default, quick, or a suite file) run on the trained model at the end, so
    # every method is measured the same way; written to final/evaluation.json (docs/eval.md). None: the method's own
    # evaluation only.
    eval_suite: str | None = None


def load_policy(config: PolicyTrainingConfig):
    """The model to train (+ LoRA adapters) and its tokenizer; logs the trainable share."""
    check_eval_suite(config)
    if config.quantization != "none" and not config.lora.enabled:
        raise ConfigError("quantization=4bit/8bit trains only adapters: set lora.enabled=true (QLoRA)")
    torch.manual_seed(config.seed)
    dtype = "float32" if config.dtype == "auto" and not config.lora.enabled else config.dtype
    model, tokenizer = load_model(config.model, dtype, config.device, config.quantization, config.trust_remote_code)
    if config.lora.enabled:
        model = apply_lora(model, config.lora, config.gradient_checkpointing)
    log_trainable(model, f"model {config.model}")
    return model, tokenizer


def log_trainable(model, label: str) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.warning("%s: %d trainable / %d parameters (%.2f%%)", label, trainable, total, 100 * trainable / total)


def train_and_save(config: PolicyTrainingConfig, model, tokenizer, method, train_examples, eval_examples,
                   callbacks=None) -> dict:
    """The engine loop for ``method`` (checkpoints save the model as ``final/`` is saved), then ``final/``: full
    weights, or the adapter (+ merged copy with ``lora.save_merged``). Returns the engine's final state."""
    engine = Engine(
        config, model, method, train_examples, eval_examples, tokenizer.pad_token_id,
        save_model=lambda directory: save_model(model, tokenizer, directory, base_spec=config.model),
        resolved_config=config_to_dict(config), callbacks=callbacks,
    )
    method.engine = engine  # methods that log or sample by step read engine.state
    state = engine.train()
    save_model(model, tokenizer, Path(config.output_dir) / "final", save_merged=config.lora.save_merged,
               base_spec=config.model)
    return state


def run_summary(config: PolicyTrainingConfig, model, state: dict) -> dict:
    """The head of evaluation.json: what ran, how far, on how many parameters."""
    return {
        "method": config.method,
        "model": config.model,
        "final_model": str(Path(config.output_dir) / "final"),
        "steps": state["step"],
        "stopped": state["stopped"] or "completed",
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "metrics": {},
    }


def read_log(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / "log_history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def check_eval_suite(config: PolicyTrainingConfig) -> None:
    """Read ``eval_suite`` before any model loads, so a typo in it costs no training time."""
    if config.eval_suite is not None:
        from posttrain.eval import load_suite

        try:
            load_suite(config.eval_suite)
        except ConfigError as exc:
            raise ConfigError(f"eval_suite: {exc}") from None


def write_evaluation(config: PolicyTrainingConfig, evaluation: dict, model=None, tokenizer=None) -> dict:
    """``output_dir/evaluation.json``, written last (a pipeline stage is complete once it exists). With
    ``eval_suite``, first the harness's evaluation of the trained ``model`` (still in memory) into
    ``final/evaluation.json``, with the harness's defaults (seed 0: the same problems as a ``posttrain eval`` baseline
    whatever the run's seed), i.e. what ``posttrain eval --model OUTPUT_DIR/final`` writes. The method's evaluation
    then names it as ``suite_evaluation`` (and ``posttrain compare OUTPUT_DIR`` reads it)."""
    output_dir = Path(config.output_dir)
    if config.eval_suite is not None:
        from posttrain.eval import evaluate

        final = output_dir / "final"
        suite = evaluate((model, tokenizer), config.eval_suite, out=final / "evaluation.json", device=config.device,
                         dtype=config.dtype, label=str(final))
        evaluation["suite_evaluation"] = {"path": "final/evaluation.json", "suite": suite["suite"]["name"],
                                          "failed_metrics": suite["failed_metrics"], "time_s": suite["time_s"]}
    atomic_write_text(output_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    return evaluation
