"""What every trainer shares: the model part of its config, loading the policy (with LoRA), the engine run that ends
in ``final/``, and evaluation.json (the run's summary, the step-0 baseline beside it)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import torch

from posttrain.config import config_to_dict, option
from posttrain.data import DataConfig
from posttrain.engine import Engine, EngineConfig, Method, distributed
from posttrain.engine.checkpoint import load_model_weights
from posttrain.engine.run_log import read_jsonl
from posttrain.engine.trackers import report_evaluation
from posttrain.errors import ConfigError
from posttrain.eval.evalfile import samples_path
from posttrain.io import atomic_write_text
from posttrain.models import LoraSettings, apply_lora, load_model, save_model
from posttrain.models.model_card import evaluation_table, model_card
from posttrain.models.freeze import FreezeSettings, freeze_parameters
from posttrain.models.reward_model import apply_reward_lora, load_reward_model

log = logging.getLogger(__name__)


@dataclass
class PolicyTrainingConfig(EngineConfig):
    """The model: which one, how it loads, and the suite that evaluates it at the end."""

    model: str = option("smollm2-135m-instruct", help="the model to train: a built-in name (posttrain models), a local "
                                                      "Hugging Face folder, or a hub id")
    dtype: str = option("auto", help="weight dtype: auto, float32/fp32, bfloat16/bf16 or float16/fp16; auto: fp32 "
                                     "(bf16 autocast on CUDA comes from precision), for a LoRA base bf16 on CUDA")
    device: str = option("auto", help="torch device, e.g. cpu, cuda, cuda:1; auto: cuda when available, else cpu")
    quantization: Literal["none", "8bit", "4bit"] = option(
        "none", help="load the base weights quantized with bitsandbytes (trains only adapters: needs lora.enabled; "
                     "4bit + LoRA is QLoRA)")
    trust_remote_code: bool = option(False, help="let transformers run the model repository's own Python code (needed "
                                                 "by some hub models)")
    lora: LoraSettings = option(
        default_factory=LoraSettings, help="LoRA adapters: train low-rank updates instead of the full weights")
    freeze: FreezeSettings = option(default_factory=FreezeSettings, help="parameters that do not train (no gradient, "
                                                                         "no optimizer state): the embeddings and "
                                                                         "decoder layers by index (docs/training.md)")
    data: DataConfig = option(default_factory=DataConfig, help="the dataset: where it is, its format and columns, "
                                                               "lengths and masking")
    eval_suite: str | None = option(None, help="the harness's suite (posttrain eval: default, quick, or a suite file) "
                                               "run on the trained model at the end, so every method is measured the "
                                               "same way; written to final/evaluation.json (docs/eval.md); None: the "
                                               "method's own evaluation only")


def load_policy(config: PolicyTrainingConfig, reward_model: bool = False):
    """The model to train (+ LoRA adapters) and its tokenizer: a causal LM, or with ``reward_model`` a decoder with a
    scalar score head (posttrain.models.reward_model; under LoRA the head trains in full). Logs the trainable share."""
    check_eval_suite(config)
    if config.quantization != "none" and not config.lora.enabled:
        raise ConfigError("quantization=4bit/8bit trains only adapters: set lora.enabled=true (QLoRA)")
    dtype = "float32" if config.dtype == "auto" and not config.lora.enabled else config.dtype
    if reward_model:
        model, tokenizer = load_reward_model(config.model, dtype, config.device, config.trust_remote_code, config.seed)
        if config.lora.enabled:
            model = apply_reward_lora(model, config.lora, config.gradient_checkpointing)
    else:
        torch.manual_seed(config.seed)
        model, tokenizer = load_model(config.model, dtype, config.device, config.quantization, config.trust_remote_code)
        if config.lora.enabled:
            model = apply_lora(model, config.lora, config.gradient_checkpointing)
    apply_freeze(model, config.freeze)
    log_trainable(model, f"{'reward model from' if reward_model else 'model'} {config.model}")
    return model, tokenizer


def apply_freeze(model, settings: FreezeSettings) -> None:
    """Freeze what ``settings`` names (after LoRA: adapters in a frozen layer freeze with it)."""
    if settings.enabled:
        frozen = freeze_parameters(model, settings)
        log.warning("froze %d parameter tensors (embeddings: %s, layers: %s)", len(frozen), settings.embeddings,
                    settings.layers or "none")


def parameter_counts(model) -> tuple[int, int]:
    """``(trainable, total)`` parameters."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def log_trainable(model, label: str) -> None:
    trainable, total = parameter_counts(model)
    log.warning("%s: %d trainable / %d parameters (%.2f%%)", label, trainable, total, 100 * trainable / total)


class ModelFiles(Protocol):
    """How a run writes its trained model(s) into a folder (checkpoints and final/ alike) and reads them back."""

    def save(self, directory: Path, save_merged: bool = False) -> None: ...

    def load(self, directory: Path) -> None: ...


@dataclass
class PolicyFiles:
    """One policy: full weights, or the LoRA adapter (+ a merged copy in final/ with ``lora.save_merged``), loadable
    by plain transformers / peft."""

    model: Any
    tokenizer: Any
    base_spec: str

    def save(self, directory: Path, save_merged: bool = False) -> None:
        save_model(self.model, self.tokenizer, directory, save_merged=save_merged, base_spec=self.base_spec)

    def load(self, directory: Path) -> None:
        load_model_weights(self.model, directory)


@dataclass
class TrainingRun:
    state: dict  # the engine's final trainer state (steps, stop reason)
    evaluations: list[dict]  # every evaluation record of the run, the step-0 baseline first


def train_and_save(config: PolicyTrainingConfig, model, tokenizer, method: Method, train_examples, eval_examples,
                   callbacks=None, files: ModelFiles | None = None) -> TrainingRun:
    """The engine loop for ``method`` (checkpoints save the model as ``final/`` is saved), then ``final/``."""
    files = files or PolicyFiles(model, tokenizer, config.model)
    engine = Engine(config, model, method, train_examples, eval_examples, tokenizer.pad_token_id,
                    save_model=files.save, load_model=files.load, resolved_config=config_to_dict(config),
                    callbacks=callbacks)
    state = engine.train()
    if distributed.is_main():  # under torchrun every rank holds the same weights; rank 0 writes them
        files.save(Path(config.output_dir) / "final", save_merged=config.lora.save_merged)
    distributed.barrier()
    return TrainingRun(state, engine.evaluations)


def evaluation_summary(config: PolicyTrainingConfig, model, run: TrainingRun, summarize: Callable[[dict], dict],
                       count_name: str, baseline_names: tuple[str, ...] | None = None) -> dict:
    """The body of evaluation.json: what ran, how far, on how many parameters; the figures ``summarize`` reads off
    the last evaluation record (each with the number of held-out items as ``count_name``), and the same figures of
    the step-0 evaluation as the baseline (only ``baseline_names`` when given)."""
    trainable, total = parameter_counts(model)
    result = {
        "method": config.method,
        "model": config.model,
        "final_model": str(Path(config.output_dir) / "final"),
        "steps": run.state["step"],
        "stopped": run.state["stopped"] or "completed",
        "trainable_parameters": trainable,
        "total_parameters": total,
        "metrics": {},
    }
    if not run.evaluations:
        return result
    last, first = run.evaluations[-1], run.evaluations[0]
    result["metrics"] = {name: {"value": value, count_name: last["eval_items"]}
                         for name, value in summarize(last).items()}
    if first["step"] == 0 and run.state["step"] > 0:
        baseline = summarize(first)
        result["baseline"] = {name: baseline[name] for name in baseline_names or baseline}
    return result


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
    if not distributed.is_main():  # rank 0 evaluates and writes for the whole run
        return evaluation
    output_dir = Path(config.output_dir)
    if config.eval_suite is not None:
        from posttrain.eval import evaluate

        final = output_dir / "final"
        suite = evaluate((model, tokenizer), config.eval_suite, out=final / "evaluation.json", device=config.device,
                         dtype=config.dtype, label=str(final))
        evaluation["suite_evaluation"] = {"path": "final/evaluation.json", "suite": suite["suite"]["name"],
                                          "failed_metrics": suite["failed_metrics"], "time_s": suite["time_s"]}
    if (output_dir / "final").is_dir():
        atomic_write_text(output_dir / "final" / "README.md", training_card(config, evaluation))
    atomic_write_text(output_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    if [name for name in config.tracker_names() if name != "jsonl"]:
        samples = read_jsonl(samples_path(output_dir / "final" / "evaluation.json")) if config.eval_suite else []
        report_evaluation(config.tracker_names(), output_dir, config_to_dict(config), evaluation.get("steps", 0),
                          evaluation, samples)
    return evaluation


def training_card(config: PolicyTrainingConfig, evaluation: dict) -> str:
    """final/README.md: what was trained from what, on which data, how far, with the held-out figures before and after
    and the config that reproduces it."""
    settings = config_to_dict(config)
    data = settings.get("data") or {}
    adapter = f"a LoRA adapter (r={config.lora.r})" if config.lora.enabled else "full weights"
    training = "\n".join([
        f"- method: {config.method} ({adapter})",
        f"- data: {data.get('path') or settings.get('task') or 'see the config'}",
        f"- optimizer steps: {evaluation.get('steps')} ({evaluation.get('stopped', 'completed')}), batch "
        f"{config.batch_size} x {config.grad_accum_steps} accumulation, learning rate {config.learning_rate:g} "
        f"({config.lr_schedule}), seed {config.seed}",
        f"- trainable parameters: {evaluation.get('trainable_parameters', '?'):,} of "
        f"{evaluation.get('total_parameters', '?'):,}" if "total_parameters" in evaluation else "",
    ])
    sections = {"Training": training}
    if evaluation.get("metrics"):
        sections["Evaluation"] = ("Held-out figures from `evaluation.json`, before training (step 0) and after.\n\n"
                                  + evaluation_table(evaluation["metrics"], evaluation.get("baseline")))
    sections["Reproduce"] = ("Save as `config.json` and run `posttrain train config.json`:\n\n```json\n"
                             + json.dumps(settings, indent=2) + "\n```")
    name = config.model or evaluation.get("model")  # distillation's pruned student has no model spec
    return model_card(f"{config.method.upper()} of {name}",
                      f"`{name}` post-trained with posttrain's `{config.method}`.", base_model=config.model,
                      tags=[config.method, "lora" if config.lora.enabled else "full-fine-tuning"], sections=sections)

