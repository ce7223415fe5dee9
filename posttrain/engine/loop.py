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
import time
from pathlib import Path
from typing import Callable

import torch

from posttrain.data.batching import count_real_tokens, split_micro_batches, step_batches
from posttrain.data.tokenize import Example
from posttrain.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from posttrain.engine.config import EngineConfig
from posttrain.engine.method import Method
from posttrain.engine.optimizer import autocast_precision, build_optimizer, lr_factor, preallocate_training_state
from posttrain.engine.output_dir import prepare_output_dir
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
        self.state = self._fresh_state()

    @property
    def evaluations(self) -> list[dict]:
        """Every evaluation record of the run so far (the step-0 baseline first), across resumes."""
        return self.run_log.evaluations

    # ----------------------------------------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run to ``total_steps`` (or early stop); returns the final trainer state."""
        config = self.config
        resume_dir = prepare_output_dir(self.output_dir, config.resume_from, config.overwrite_output_dir,
                                        self.method.outputs)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "config.json", json.dumps(self.resolved_config, indent=2) + "\n")
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if config.gradient_checkpointing:
            # a transformers model, or a module holding several (a policy and its critic)
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
        self.state = state = self._resume(resume_dir) if resume_dir is not None else self._fresh_state()
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
        if state["step"] and state["nonfinite_total"] >= state["step"]:
            raise NonFiniteLossError(
                f"every one of the {state['step']} steps had a non-finite loss or gradient: nothing was trained. "
                "Check the data (NaN or infinite values) and lower learning_rate")
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
        if self.step_in_backward:
            self.step_in_backward.start()
        loss_total, metrics = self._backward(micro, total_items)
        metrics.update(self.method.step_metrics())
        tokens = sum(count_real_tokens(b) for b in micro if "attention_mask" in b)
        grad_norm, finite = self._update(loss_total)
        return loss_total, metrics, tokens, grad_norm, finite

    def _backward(self, micro: list[dict[str, torch.Tensor]], total_items: int) -> tuple[float, dict[str, float]]:
        """Backward through each micro-batch's loss, divided by the whole step's item count (the same normaliser
        for every micro-batch, so accumulation is exact); the step's loss and metric means."""
        loss_total = 0.0
        metrics: dict[str, float] = {}
        for batch in micro:
            if self.method.count(batch) == 0:  # e.g. every row of an RL micro-batch filtered out
                continue
            with self._autocast():
                out = self.method.loss(self.model, batch)
            loss = out.loss_sum / total_items
            loss_total += loss.item()
            if self.step_in_backward and not math.isfinite(loss_total):
                continue  # its backward would update the weights; the step counts as non-finite in _update
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for name, value in out.metrics.items():
                metrics[name] = metrics.get(name, 0.0) + float(value) / total_items
        return loss_total, metrics

    def _update(self, loss_total: float) -> tuple[float, bool]:
        """Clip and step (unless step-in-backward has stepped already), then the schedule; ``(grad norm, finite)``."""
        if self.step_in_backward:  # backward has updated the weights already; the rest of the step is bookkeeping
            grad_norm, grads_finite = self.step_in_backward.finish()
            finite = math.isfinite(loss_total) and grads_finite
            self._after_update(finite, loss_total, grad_norm)
            return grad_norm, finite
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
        return grad_norm, finite

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
        step = self.state["step"]
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
