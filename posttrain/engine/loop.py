"""THE training loop, shared by every method (the contract it runs a method by: ``posttrain.engine.method``).

Around the method's summed loss, divided by the item count of the whole optimizer step (so gradient accumulation
and batch splitting do not change it), the engine does: AdamW, the LR schedule, mixed precision, clipping, a
non-finite guard, logging (log_history.jsonl, progress bar, TensorBoard), periodic evaluation with early stopping,
and atomic checkpoints that resume exactly (same weights, same logged losses as an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch

from posttrain.config import option
from posttrain.data.batching import count_real_tokens, split_micro_batches, step_batches
from posttrain.data.tokenize import Example
from posttrain.engine.checkpoint import list_checkpoints, load_checkpoint, load_model_weights, save_checkpoint
from posttrain.engine.method import Method
from posttrain.engine.optimizer import autocast_precision, build_optimizer, lr_factor, preallocate_training_state
from posttrain.engine.run_log import (
    LOG_FILE,
    RunLog,
    accumulate_window,
    empty_window,
    truncate_jsonl,
    window_record,
)
from posttrain.engine.step_in_backward import StepInBackward
from posttrain.errors import ConfigError, PosttrainError
from posttrain.io import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    """The engine: the training loop every method shares."""

    output_dir: str = option("runs/default", help="folder of the run: config.json, log_history.jsonl, checkpoints/, "
                                                  "final/, evaluation.json")
    seed: int = option(0, help="seeds torch, Python's random, the data order and (RL methods) the sampling")
    max_steps: int | None = option(None, min=1, help="optimizer steps to train; None: num_epochs decides")
    num_epochs: float = option(1.0, min=0, help="passes over the training set (fractions allowed), used when max_steps "
                                                "is None")
    batch_size: int = option(8, min=1, help="examples per micro-batch")
    grad_accum_steps: int = option(1, min=1, help="micro-batches per optimizer step: a step sees batch_size x "
                                                  "grad_accum_steps examples")
    learning_rate: float = option(2e-5, min=0, help="AdamW's peak learning rate, reached after warmup_steps")
    lr_schedule: Literal["constant", "linear", "cosine"] = option(
        "cosine", help="after warmup: constant, or a linear or cosine decay to 0 at the last step")
    warmup_steps: int = option(0, min=0, help="optimizer steps of linear warmup up to learning_rate")
    weight_decay: float = option(0.0, min=0, help="AdamW's decoupled weight decay, applied to matrices only (biases "
                                                  "and norm weights get none)")
    adam_beta1: float = option(0.9, min=0, max=1, help="AdamW's decay rate of the gradient's moving average")
    adam_beta2: float = option(0.999, min=0, max=1, help="AdamW's decay rate of the squared gradient's moving average")
    adam_epsilon: float = option(1e-8, min=0, help="AdamW's epsilon, added to the square root in the denominator")
    max_grad_norm: float = option(1.0, min=0, help="clip the gradients' global L2 norm to this; 0 disables clipping "
                                                   "(the norm is still logged)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", help="autocast precision of the forward passes; auto: bf16 on CUDA, fp32 on CPU; fp16 (CUDA only) adds "
                     "a loss scaler")
    gradient_checkpointing: bool = option(False, help="recompute activations in backward instead of keeping them: less "
                                                      "memory, more compute")
    # Kept buffers are not faulted in again each step, and do not leave 0.5 GB (SmolLM2-135M fp32) of freed blocks
    # for activations to fragment. With accumulation the gradients are alive in every later micro-batch anyway, so
    # keeping them adds no peak; without it, freeing them lets the next forward's activations reuse that memory.
    # A kept gradient counts as zero (not skipped by AdamW) in a step where no loss reaches its parameter.
    keep_grad_buffers: bool | None = option(None, help="zero the gradients in place after each step instead of freeing "
                                                       "them; None: keep them when grad_accum_steps > 1")
    # No full set of gradients at the peak: 0.54 GB less for SmolLM2-135M in fp32 (posttrain.engine.step_in_backward
    # says why it cannot clip or accumulate).
    optimizer_in_backward: bool = option(False, help="step each parameter inside backward as soon as its gradient is "
                                                     "ready, then free that gradient; needs max_grad_norm: 0 and "
                                                     "grad_accum_steps: 1")
    logging_steps: int = option(10, min=1, help="optimizer steps per log_history.jsonl record (loss and metrics "
                                                "averaged over them); the last step is always logged")
    eval_steps: int | None = option(None, min=1, help="evaluate every N optimizer steps; None: at the end only")
    eval_on_start: bool = option(True, help="also evaluate at step 0: the baseline that final figures are compared "
                                            "with")
    eval_batch_size: int = option(16, min=1, help="examples per forward pass in the engine's evaluation")
    patience: int | None = option(None, min=1, help="stop after this many evaluations in a row without a lower "
                                                    "eval_loss; None: never stop early")
    save_steps: int | None = option(None, min=1, help="write a checkpoint (checkpoints/step_N/) every N optimizer "
                                                      "steps; None: none, only final/")
    save_total_limit: int | None = option(2, min=1, help="checkpoints kept, the newest (older ones are deleted); None: "
                                                         "keep all")
    max_consecutive_nonfinite: int = option(5, min=1, help="optimizer steps in a row with a non-finite loss or "
                                                           "gradient (each skipped) before the run stops with an error")
    resume_from: str | None = option(None, help="a checkpoint folder to resume from; None: re-running into the same "
                                                "output_dir resumes from its newest checkpoint by itself")
    overwrite_output_dir: bool = option(False, help="delete a previous run's outputs in output_dir and start over, "
                                                    "instead of resuming or refusing")
    shuffle: bool = option(True, help="shuffle the training examples each epoch (seeded by seed and the epoch)")
    bucket_window: int = option(16, min=1, help="step batches per length-sorting window: examples of similar length "
                                                "share a batch, which cuts padding")
    tensorboard: bool = option(False, help="also write TensorBoard events to output_dir/tensorboard (needs the "
                                           "tensorboard extra)")
    progress_bar: bool = option(True, help="show a progress bar; false: log each record as a JSON line instead")


class NonFiniteLossError(PosttrainError):
    pass


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        model,
        method: Method,
        train_examples: list[Example],
        eval_examples: list[Example] | None,
        pad_token_id: int,
        save_model: Callable[[Path], None],
        resolved_config: dict | None = None,
        callbacks: list[Callable[["Engine", dict], None]] | None = None,
        load_model: Callable[[Path], None] | None = None,
    ):
        if not train_examples:
            raise ConfigError("the training set is empty")
        self.config = config
        self.model = model
        self.method = method
        self.train_examples = train_examples
        self.eval_examples = eval_examples or []
        self.pad_token_id = pad_token_id
        self.save_model = save_model  # writes the model into a checkpoint folder; load_model reads it back
        self.load_model = load_model or (lambda directory: load_model_weights(model, directory))
        self.resolved_config = resolved_config or {}
        self.callbacks = callbacks or []
        self.output_dir = Path(config.output_dir)
        self.device = next(model.parameters()).device
        self.lengths = [len(e) for e in train_examples]
        self.step_size = config.batch_size * config.grad_accum_steps
        self.steps_per_epoch = math.ceil(len(train_examples) / self.step_size)
        self.total_steps = config.max_steps or max(1, math.ceil(config.num_epochs * self.steps_per_epoch))
        self.autocast_dtype, self.scaler = autocast_precision(config.precision, self.device)
        self._check_optimizer_in_backward()
        self.step_in_backward: StepInBackward | None = None  # set up in train()

    @property
    def evaluations(self) -> list[dict]:
        """Every evaluation record of the run so far (the step-0 baseline first), across resumes."""
        return self.run_log.evaluations

    # ----------------------------------------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run to ``total_steps`` (or early stop); returns the final trainer state."""
        config = self.config
        resume_dir = self._prepare_output_dir()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "config.json", json.dumps(self.resolved_config, indent=2) + "\n")
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if config.gradient_checkpointing:
            # a transformers model, or a container of them (PPO: policy and value model)
            models = [self.model] if hasattr(self.model, "gradient_checkpointing_enable") else self.model.children()
            for model in models:
                if hasattr(model, "gradient_checkpointing_enable"):
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.optimizer = build_optimizer(self.model, config.learning_rate, config.weight_decay,
                                         (config.adam_beta1, config.adam_beta2), config.adam_epsilon,
                                         self.method.learning_rates(self.model))
        preallocate_training_state(self.optimizer, with_grads=self._keep_grad_buffers())
        self.step_in_backward = StepInBackward(self.optimizer) if config.optimizer_in_backward else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, config.warmup_steps, config.lr_schedule))
        state = self._fresh_state()
        if resume_dir is not None:
            state = self._resume(resume_dir)
        self.state = state
        self.run_log = RunLog(self.output_dir, config.tensorboard, echo=not config.progress_bar)
        self.model.train()
        if config.eval_on_start and state["step"] == 0 and self.eval_examples:
            self.run_log.write({"step": 0, **self.evaluate()})
        progress = self._progress(state["step"])
        if self.step_in_backward:
            self.step_in_backward.attach()
        try:
            self._train_loop(state, progress, time.perf_counter())
        finally:
            if self.step_in_backward:
                self.step_in_backward.detach()
        progress.close()
        if self.eval_examples and not (config.eval_steps and state["step"] % config.eval_steps == 0):
            self._eval_and_maybe_stop(state)
        self.run_log.close()
        return state

    def _train_loop(self, state: dict, progress, window_start: float) -> None:
        config = self.config
        while state["step"] < self.total_steps and not state["stopped"]:
            epoch, position = state["epoch"], state["batch_in_epoch"]
            plan = step_batches(self.lengths, self.step_size, config.seed, epoch, config.shuffle, config.bucket_window)
            indices = plan[position]
            state["epoch"], state["batch_in_epoch"] = (epoch + 1, 0) if position + 1 == len(plan) else (epoch, position + 1)

            loss, metrics, tokens, grad_norm, finite = self._optimizer_step(indices)
            state["step"] += 1
            self.method.after_update(state["step"])
            accumulate_window(state["window"], loss, metrics, tokens, grad_norm, finite)
            progress.update(1)
            if state["step"] % config.logging_steps == 0 or state["step"] == self.total_steps:
                record = window_record(state["window"], state["step"], round(state["step"] / self.steps_per_epoch, 4),
                                       self.scheduler.get_last_lr()[0], time.perf_counter() - window_start)
                state["window"] = empty_window()
                progress.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                self.run_log.write(record)
                window_start = time.perf_counter()
            if config.eval_steps and state["step"] % config.eval_steps == 0 and self.eval_examples:
                self._eval_and_maybe_stop(state)
            for callback in self.callbacks:
                callback(self, state)
            if config.save_steps and state["step"] % config.save_steps == 0:
                self.save_checkpoint()

    def _optimizer_step(self, indices: list[int]):
        """One optimizer step over the step batch ``indices``, split into micro-batches."""
        micro = [
            self._to_device(self.method.collate([self.train_examples[i] for i in chunk], self.pad_token_id))
            for chunk in split_micro_batches(indices, self.lengths, self.config.grad_accum_steps)
        ]
        with self._autocast():
            self.method.prepare_step(self.model, micro, self.state["step"])
        total_items = sum(self.method.count(b) for b in micro)
        if total_items == 0:
            log.warning("step %d: no item in the step batch carries loss (all masked or filtered); no update",
                        self.state["step"] + 1)
            self.state["window"]["empty"] = self.state["window"].get("empty", 0) + 1
            return 0.0, self.method.step_metrics(), 0, 0.0, True
        loss_total = 0.0
        metrics: dict[str, float] = {}
        if self.step_in_backward:
            self.step_in_backward.start()
        for batch in micro:
            if self.method.count(batch) == 0:  # e.g. every row of an RL micro-batch filtered out
                continue
            with self._autocast():
                out = self.method.loss(self.model, batch)
            loss = out.loss_sum / total_items  # the same normaliser for every micro-batch: accumulation is exact
            loss_total += loss.item()
            if self.step_in_backward and not math.isfinite(loss_total):
                continue  # its backward would update the weights; the step counts as non-finite below
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for name, value in out.metrics.items():
                metrics[name] = metrics.get(name, 0.0) + float(value) / total_items
        metrics.update(self.method.step_metrics())
        tokens = sum(count_real_tokens(b) for b in micro if "attention_mask" in b)
        if self.step_in_backward:  # backward has updated the weights already; the rest of the step is bookkeeping
            grad_norm, grads_finite = self.step_in_backward.finish()
            finite = math.isfinite(loss_total) and grads_finite
            self._after_update(finite, loss_total, grad_norm)
            return loss_total, metrics, tokens, grad_norm, finite
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.max_grad_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        finite = math.isfinite(loss_total) and (math.isfinite(grad_norm) or self.scaler is not None)
        if finite:
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self._after_update(finite, loss_total, grad_norm)
        self.optimizer.zero_grad(set_to_none=not self._keep_grad_buffers())
        return loss_total, metrics, tokens, grad_norm, finite

    def _after_update(self, finite: bool, loss_total: float, grad_norm: float) -> None:
        """Advance the LR schedule after an update; count non-finite steps and stop after too many in a row."""
        if finite:
            self.scheduler.step()
            self.state["nonfinite_in_a_row"] = 0
            return
        self.state["nonfinite_in_a_row"] += 1
        self.state["nonfinite_total"] += 1
        partial = self.step_in_backward.nonfinite if self.step_in_backward else 0
        skipped = (f"{partial} parameters with a non-finite gradient kept their weights, the others were updated "
                   "(optimizer_in_backward)" if partial else "step skipped")
        log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); %s",
                    self.state["step"] + 1, loss_total, grad_norm, skipped)
        if self.state["nonfinite_in_a_row"] >= self.config.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.state['nonfinite_in_a_row']} non-finite steps in a row (up to step {self.state['step'] + 1}); "
                "stopping. Lower learning_rate, check the data, or resume from the last checkpoint "
                f"in {self.output_dir / 'checkpoints'}"
            )

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The method's own evaluation, or the loss and metrics averaged over the whole eval set (item-weighted,
        like training)."""
        step = self.state["step"] if hasattr(self, "state") else 0
        own = self.method.evaluate(self.model, step)
        if own is not None:
            return own
        was_training = self.model.training
        self.model.eval()
        lengths = [len(e) for e in self.eval_examples]
        order = sorted(range(len(self.eval_examples)), key=lambda i: lengths[i])
        loss_sum, items, sums = 0.0, 0, {}
        for start in range(0, len(order), self.config.eval_batch_size):
            chunk = [self.eval_examples[i] for i in order[start : start + self.config.eval_batch_size]]
            batch = self._to_device(self.method.collate(chunk, self.pad_token_id))
            with self._autocast():
                self.method.prepare_step(self.model, [batch], step)
                out = self.method.loss(self.model, batch)
            loss_sum += float(out.loss_sum)
            items += self.method.count(batch)
            for name, value in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        self.model.train(was_training)
        result = {"eval_loss": loss_sum / max(items, 1), "eval_items": items}
        result.update({f"eval_{k}": v / max(items, 1) for k, v in sums.items()})
        return result

    def _eval_and_maybe_stop(self, state: dict) -> None:
        result = self.evaluate()
        self.run_log.write({"step": state["step"], **result})
        if "eval_loss" not in result:  # a method's own evaluation may have no loss: no early stopping on it
            return
        if result["eval_loss"] < state["best_eval_loss"]:
            state["best_eval_loss"], state["evals_without_improvement"] = result["eval_loss"], 0
        else:
            state["evals_without_improvement"] += 1
            if self.config.patience and state["evals_without_improvement"] >= self.config.patience:
                state["stopped"] = f"early stop: eval_loss did not improve for {self.config.patience} evaluations"
                log.warning("step %d: %s", state["step"], state["stopped"])

    # ----------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        state = dict(self.state, scheduler=self.scheduler.state_dict(), method=self.method.state_dict())
        directory = self.output_dir / "checkpoints" / f"step_{self.state['step']}"
        return save_checkpoint(directory, self.save_model, self.optimizer, state, self.config.save_total_limit)

    def _resume(self, directory: Path) -> dict:
        """Weights, optimizer, schedule, RNG and the method's own state from a checkpoint; the log files cut back
        to its step (the steps after it are logged again)."""
        state = load_checkpoint(directory, self.load_model, self.optimizer)
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.method.load_state_dict(state.pop("method", {}), state["step"])
        for name in (LOG_FILE, *self.method.outputs):
            if name.endswith(".jsonl"):
                truncate_jsonl(self.output_dir / name, state["step"])
        log.warning("resumed from %s at step %d", directory, state["step"])
        return state

    def _prepare_output_dir(self) -> Path | None:
        """Resume from ``resume_from`` or the newest checkpoint in output_dir; refuse to write over a finished run."""
        out = self.output_dir
        if self.config.resume_from:
            resume = Path(self.config.resume_from)
            if not (resume / "trainer_state.json").is_file():
                raise ConfigError(f"resume_from={resume}: not a complete checkpoint (no trainer_state.json)")
            return resume
        checkpoints = list_checkpoints(out / "checkpoints")
        finished = (out / "final").exists()
        if self.config.overwrite_output_dir:
            clear_run_outputs(out, self.method.outputs)
            return None
        if finished:
            raise ConfigError(
                f"output_dir {out} holds a finished run (final/ exists); choose another output_dir or set "
                "overwrite_output_dir=true"
            )
        if checkpoints:
            return checkpoints[-1]
        if out.exists() and any(p.name != "config.json" for p in out.iterdir()):
            raise ConfigError(
                f"output_dir {out} is not empty and holds no checkpoint to resume from; choose another output_dir "
                "or set overwrite_output_dir=true"
            )
        return None

    # --------------------------------------------------------------------------------------------- set-up
    def _fresh_state(self) -> dict:
        return {
            "step": 0, "epoch": 0, "batch_in_epoch": 0, "total_steps": self.total_steps,
            "best_eval_loss": float("inf"), "evals_without_improvement": 0, "stopped": "",
            "nonfinite_in_a_row": 0, "nonfinite_total": 0, "window": empty_window(),
        }

    def _progress(self, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=initial, disable=not self.config.progress_bar, desc="train",
                    dynamic_ncols=True)

    def _keep_grad_buffers(self) -> bool:
        keep = self.config.keep_grad_buffers
        if self.config.optimizer_in_backward:
            return False
        return self.config.grad_accum_steps > 1 if keep is None else keep

    def _check_optimizer_in_backward(self) -> None:
        config = self.config
        if not config.optimizer_in_backward:
            return
        if config.max_grad_norm:
            raise ConfigError(
                f"optimizer_in_backward=true updates each parameter before the next gradient exists, so there is no "
                f"global gradient norm to clip by: set max_grad_norm=0 (got {config.max_grad_norm})")
        if config.grad_accum_steps != 1:
            raise ConfigError(
                f"optimizer_in_backward=true updates the weights in every backward pass: set grad_accum_steps=1 (got "
                f"{config.grad_accum_steps}) and put the whole step in batch_size")
        if config.keep_grad_buffers:
            raise ConfigError("optimizer_in_backward=true frees each gradient after its update: keep_grad_buffers "
                              "must be false or unset")
        if self.scaler is not None:
            raise ConfigError("optimizer_in_backward=true does not support precision=fp16 (the loss scaler "
                              "unscales every gradient before one step); use bf16 or fp32")

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


# the engine's own outputs; a method's (Method.outputs) are cleared with them
RUN_OUTPUTS = (LOG_FILE, "evaluation.json", "checkpoints", "final", "tensorboard")


def clear_run_outputs(output_dir: Path, method_outputs: tuple[str, ...] = ()) -> None:
    """Remove a previous run's outputs (only the names of the output contract, never anything else in the folder)."""
    for name in (*RUN_OUTPUTS, *method_outputs):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
