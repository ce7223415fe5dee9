"""THE training loop, shared by every method (the contract it runs a method by: ``posttrain.engine.method``).

Around the method's summed loss, divided by the item count of the whole optimizer step (so gradient accumulation
and batch splitting do not change it), the engine does: AdamW, the LR schedule, mixed precision, clipping, a
non-finite guard, logging (log_history.jsonl, progress bar, TensorBoard), periodic evaluation with early stopping,
and atomic checkpoints that resume exactly (same weights, same logged losses as an uninterrupted run). Under torchrun
each process trains on its share of every step batch (``posttrain.engine.distributed``, docs/distributed.md).
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
from posttrain.engine import distributed, fsdp
from posttrain.engine.checks import (
    NonFiniteLossError,
    check_optimizer_in_backward,
    check_skipped_steps,
    check_world,
    track_best,
)
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
from posttrain.engine.trackers import open_trackers
from posttrain.errors import ConfigError
from posttrain.io import TEMPORARY_PREFIXES, atomic_write_text

log = logging.getLogger(__name__)


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
        distributed.init_from_env(config.distributed.backend, config.distributed.timeout_s, self.device)
        # FSDP (posttrain.engine.fsdp): each rank holds a shard of the weights, gradients and AdamW moments
        self.sharded = distributed.world_size() > 1 and config.distributed.strategy == "fsdp"
        self.lengths = [len(e) for e in train_examples]
        # the global step batch: every rank takes its share of it (distributed.rank_share)
        self.step_size = config.batch_size * config.grad_accum_steps * distributed.world_size()
        self.steps_per_epoch = math.ceil(len(train_examples) / self.step_size)
        self.total_steps = config.max_steps or max(1, math.ceil(config.num_epochs * self.steps_per_epoch))
        self.autocast_dtype, self.scaler = autocast_precision(config.precision, self.device)
        check_optimizer_in_backward(config, self.scaler)
        check_world(config, method, model, len(train_examples), self.step_size, self.sharded)
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
        resume_dir = None
        if distributed.is_main():  # the run's files are rank 0's; the others learn where it resumes from
            resume_dir = prepare_output_dir(self.output_dir, config.resume_from, config.overwrite_output_dir,
                                            self.method.outputs)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / "config.json", json.dumps(self.resolved_config, indent=2) + "\n")
        resume_dir = distributed.broadcast_object(resume_dir)
        if distributed.world_size() > 1:
            log.warning("%d processes x batch_size %d x grad_accum_steps %d = %d examples per optimizer step",
                        distributed.world_size(), config.batch_size, config.grad_accum_steps, self.step_size)
            distributed.broadcast_parameters(self.model)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if config.gradient_checkpointing:
            # a transformers model, or a module holding several (a policy and its critic)
            models = [self.model] if hasattr(self.model, "gradient_checkpointing_enable") else self.model.children()
            for model in models:
                if hasattr(model, "gradient_checkpointing_enable"):
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.sharded:  # after the broadcast (identical full weights to shard), before the optimizer sees them
            fsdp.shard_model(self.model, self.autocast_dtype)
        self.optimizer = build_optimizer(self.model, config.learning_rate, config.weight_decay,
                                         (config.adam_beta1, config.adam_beta2), config.adam_epsilon,
                                         self.method.learning_rates(self.model))
        preallocate_training_state(self.optimizer, with_grads=self._keep_grad_buffers())
        self.step_in_backward = StepInBackward(self.optimizer) if config.optimizer_in_backward else None
        schedule_params = config.lr_schedule_params()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, config.warmup_steps, config.lr_schedule,
                                                   schedule_params))
        self.state = state = self._resume(resume_dir) if resume_dir is not None else self._fresh_state()
        trackers = (open_trackers(config.tracker_names(), self.output_dir, self.resolved_config)
                    if distributed.is_main() else [])
        self.run_log = RunLog(self.output_dir, trackers, echo=not config.progress_bar, write=distributed.is_main())
        self.model.train()
        if config.eval_on_start and state["step"] == 0 and self.eval_examples:
            self.run_log.write({"step": 0, **self.evaluate()})
            self.run_log.write_tables(self.method.outputs, 0)
        progress = self._progress(state["step"])
        if self.step_in_backward:
            self.step_in_backward.attach()
        try:
            self._train_loop(state, progress, time.perf_counter())
        except Exception as exc:
            distributed.record_failure(exc)  # the other ranks stop with this message instead of waiting for it
            raise
        finally:
            if self.step_in_backward:
                self.step_in_backward.detach()
        progress.close()
        evaluated = self.evaluations and self.evaluations[-1]["step"] == state["step"]  # e.g. resumed at the end
        if self.eval_examples and not evaluated:
            self._eval_and_maybe_stop(state)
        if self.sharded:  # final/, the evaluation and generation after training take the plain full model
            fsdp.unshard_model(self.model)
        self.run_log.close()
        check_skipped_steps(state, config.warn_nonfinite_fraction)
        return state

    def _train_loop(self, state: dict, progress, window_start: float) -> None:
        config = self.config
        while state["step"] < self.total_steps and not state["stopped"]:
            epoch, position = state["epoch"], state["batch_in_epoch"]
            plan = step_batches(self.lengths, self.step_size, config.seed, epoch, config.shuffle, config.bucket_window)
            indices = distributed.rank_share(plan[position], self.lengths)
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
        total_items = int(distributed.all_reduce_sum([sum(self.method.count(b) for b in micro)])[0])
        if total_items == 0:
            log.warning("step %d: no item in the step batch carries loss (all masked or filtered); no update",
                        self.state["step"] + 1)
            self.state["window"]["empty"] = self.state["window"].get("empty", 0) + 1
            # the method's per-step figures (a rollout's reward) are still over all ranks, not rank 0's alone
            _, metrics, _ = distributed.step_figures(0.0, {}, self.method.step_metrics(), 0)
            return 0.0, metrics, 0, 0.0, True
        if self.step_in_backward:
            self.step_in_backward.start()
        loss_total, metrics = self._backward(micro, total_items)
        tokens = sum(count_real_tokens(b) for b in micro if "attention_mask" in b)
        loss_total, metrics, tokens = distributed.step_figures(loss_total, metrics, self.method.step_metrics(), tokens)
        if not self.sharded:  # FSDP has reduce-scattered (summed) each gradient in backward already
            distributed.all_reduce_gradients(self.model)
        grad_norm, finite = self._update(loss_total)
        return loss_total, metrics, tokens, grad_norm, finite

    def _backward(self, micro: list[dict[str, torch.Tensor]], total_items: int) -> tuple[float, dict[str, float]]:
        """Backward through each micro-batch's loss, divided by the whole step's item count (the same normaliser
        for every micro-batch, so accumulation is exact); the step's loss and metric means."""
        loss_total = 0.0
        metrics: dict[str, float] = {}
        # FSDP: a rank with fewer micro-batches than another (a short last batch) adds passes of zero gradient
        extra_passes = fsdp.missing_passes(len(micro)) if self.sharded else 0
        for batch in micro:
            if self.method.count(batch) == 0 and not self.sharded:  # e.g. every RL row filtered out
                continue  # (FSDP runs it: every rank must run as many passes, each gathering the weights)
            with self._autocast():
                out = self.method.loss(self.model, batch)
            loss = out.loss_sum / total_items
            loss_total += loss.item()
            if self.step_in_backward and not math.isfinite(loss_total):
                continue  # its backward would update the weights; the step counts as non-finite in _update
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for name, value in out.metrics.items():
                metrics[name] = metrics.get(name, 0.0) + float(value) / total_items
        for _ in range(extra_passes):
            with self._autocast():
                out = self.method.loss(self.model, micro[-1])
            (out.loss_sum * 0.0).backward()
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
        grad_norm = float(fsdp.full_value(torch.nn.utils.clip_grad_norm_(params, max_norm)))
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
        like training; under torchrun each rank scores every world-size-th example and the sums are added up)."""
        step = self.state["step"]
        own = self.method.evaluate(self.model, step)
        if own is not None:
            return own
        was_training = self.model.training
        self.model.eval()
        lengths = [len(e) for e in self.eval_examples]
        order = sorted(range(len(self.eval_examples)), key=lambda i: lengths[i])
        order = order[distributed.rank() :: distributed.world_size()]
        loss_sum, items, sums = 0.0, 0, {}
        # FSDP gathers weights in every forward: a rank with fewer batches runs discarded ones (counted before any)
        extra_passes = fsdp.missing_passes(-(-len(order) // self.config.eval_batch_size)) if self.sharded else 0
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
        for _ in range(extra_passes):
            batch = self._to_device(self.method.collate(self.eval_examples[:1], self.pad_token_id))
            with self._autocast():
                self.method.prepare_step(self.model, [batch], step)  # its passes too (KTO's z0), as for a real batch
                self.method.loss(self.model, batch)
        self.model.train(was_training)
        if distributed.world_size() > 1:
            sums = distributed.sum_over_ranks(dict(sums, eval_loss_sum=loss_sum, eval_items=items))
            loss_sum, items = sums.pop("eval_loss_sum"), int(sums.pop("eval_items"))
        result = {"eval_loss": loss_sum / max(items, 1), "eval_items": items}
        result.update({f"eval_{k}": v / max(items, 1) for k, v in sums.items()})
        return result

    def _eval_and_maybe_stop(self, state: dict) -> None:
        result = self.evaluate()
        self.run_log.write({"step": state["step"], **result})
        self.run_log.write_tables(self.method.outputs, state["step"])
        if track_best(state, result, *self.config.best_metric(), self.config.patience):
            if self.config.save_best and distributed.is_main():
                self.save_model(self.output_dir / "best")

    # ----------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint (every rank holds the same weights and optimizer state). Under FSDP every
        rank first writes its shards into a temporary folder, which rank 0 moves into the checkpoint it writes."""
        state = dict(self.state, scheduler=self.scheduler.state_dict(), method=self.method.state_dict())
        directory = self.output_dir / "checkpoints" / f"step_{self.state['step']}"
        save_model, optimizer = self.save_model, self.optimizer
        if self.sharded:
            staging = directory.with_name(f"{TEMPORARY_PREFIXES[0]}{directory.name}-shards")
            fsdp.write_shards(staging, self.model, self.optimizer)
            save_model, optimizer = (lambda tmp: staging.replace(tmp / fsdp.SHARDED_DIR)), None
        if not distributed.is_main():
            return None
        return save_checkpoint(directory, save_model, optimizer, state, self.config.save_total_limit)

    def _resume(self, directory: Path) -> dict:
        """Weights, optimizer, schedule, RNG and the method's own state from a checkpoint; the log files cut back
        to its step (the steps after it are logged again)."""
        if (directory / fsdp.SHARDED_DIR).is_dir():  # written under FSDP: resharded to this run's processes
            state = load_checkpoint(directory, lambda d: fsdp.read_shards(d, self.model, self.optimizer), None)
        elif self.sharded:  # a single-process checkpoint: each rank keeps its shard
            state = load_checkpoint(directory, lambda d: fsdp.read_full_checkpoint(d, self.model, self.optimizer), None)
        else:
            state = load_checkpoint(directory, self.load_model, self.optimizer)
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.method.load_state_dict(state.pop("method", {}), state["step"])
        for name in (LOG_FILE, *self.method.outputs) if distributed.is_main() else ():
            if name.endswith(".jsonl"):
                truncate_jsonl(self.output_dir / name, state["step"])
        log.warning("resumed from %s at step %d", directory, state["step"])
        return state

    # --------------------------------------------------------------------------------------------- set-up
    def _fresh_state(self) -> dict:
        return {
            "step": 0, "epoch": 0, "batch_in_epoch": 0, "total_steps": self.total_steps,
            "best_metric": None, "best_step": None, "evals_without_improvement": 0, "stopped": "",
            "nonfinite_in_a_row": 0, "nonfinite_total": 0, "window": empty_window(),
        }

    def _progress(self, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=initial, desc="train",
                    disable=not (self.config.progress_bar and distributed.is_main()),
                    dynamic_ncols=True)

    def _keep_grad_buffers(self) -> bool:
        keep = self.config.keep_grad_buffers
        if self.config.optimizer_in_backward:
            return False
        return self.config.grad_accum_steps > 1 if keep is None else keep

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
