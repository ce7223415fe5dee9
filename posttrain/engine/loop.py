"""THE training loop, shared by every method.

A method gives the engine two functions:

    count(batch) -> int                     the items its loss averages over (loss tokens for SFT, pairs for DPO)
    loss(model, batch) -> LossOutput        the loss *summed* over those items, and metric sums

and the engine divides by the item count of the whole optimizer step, so gradient accumulation and batch splitting
do not change the loss. Around that it does: AdamW, the LR schedule, mixed precision, clipping, a non-finite guard,
logging (log_history.jsonl, progress bar, TensorBoard), periodic evaluation with early stopping, and atomic
checkpoints that resume exactly (same weights, same logged losses as an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

import torch

from posttrain.engine.checkpoint import list_checkpoints, load_checkpoint, load_model_weights, save_checkpoint
from posttrain.data.batching import collate, count_real_tokens, split_micro_batches, step_batches
from posttrain.data.tokenize import Example
from posttrain.errors import ConfigError, PosttrainError, require
from posttrain.io import atomic_write_text
from posttrain.engine.step_in_backward import StepInBackward

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int | None = field(default=None, metadata={"min": 1})  # None: num_epochs decides
    num_epochs: float = field(default=1.0, metadata={"min": 0})
    batch_size: int = field(default=8, metadata={"min": 1})  # examples per micro-batch
    grad_accum_steps: int = field(default=1, metadata={"min": 1})  # micro-batches per optimizer step
    learning_rate: float = field(default=2e-5, metadata={"min": 0})
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = field(default=0, metadata={"min": 0})
    weight_decay: float = field(default=0.0, metadata={"min": 0})
    adam_beta1: float = field(default=0.9, metadata={"min": 0, "max": 1})
    adam_beta2: float = field(default=0.999, metadata={"min": 0, "max": 1})
    adam_epsilon: float = field(default=1e-8, metadata={"min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"min": 0})  # 0 disables clipping (the norm is still logged)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    # Zero gradients in place after each step instead of freeing them; None: keep them when grad_accum_steps > 1.
    # Kept buffers are not faulted in again each step, and do not leave 0.5 GB (SmolLM2-135M fp32) of freed blocks
    # for activations to fragment. With accumulation the gradients are alive in every later micro-batch anyway, so
    # keeping them adds no peak; without it, freeing them lets the next forward's activations reuse that memory.
    # A kept gradient counts as zero (not skipped by AdamW) in a step where no loss reaches its parameter.
    keep_grad_buffers: bool | None = None
    # Step each parameter inside backward as soon as its gradient is ready, then free that gradient: the peak holds
    # no full set of gradients (0.54 GB less for SmolLM2-135M in fp32). Needs max_grad_norm: 0 and grad_accum_steps:
    # 1 (posttrain.step_in_backward says why).
    optimizer_in_backward: bool = False
    logging_steps: int = field(default=10, metadata={"min": 1})
    eval_steps: int | None = field(default=None, metadata={"min": 1})  # None: evaluate at the end only
    eval_on_start: bool = True  # the step-0 evaluation is the baseline that final figures are compared with
    eval_batch_size: int = field(default=16, metadata={"min": 1})
    patience: int | None = field(default=None, metadata={"min": 1})  # stop after this many evals without improvement
    save_steps: int | None = field(default=None, metadata={"min": 1})
    save_total_limit: int | None = field(default=2, metadata={"min": 1})
    max_consecutive_nonfinite: int = field(default=5, metadata={"min": 1})
    resume_from: str | None = None  # a checkpoint folder; re-running into the same output_dir resumes by itself
    overwrite_output_dir: bool = False
    shuffle: bool = True
    bucket_window: int = field(default=16, metadata={"min": 1})  # step batches per length-sorting window
    tensorboard: bool = False
    progress_bar: bool = True


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # summed over the batch's items; the engine divides by the step's item count
    metrics: dict[str, float] = field(default_factory=dict)  # sums over the same items


class Method(Protocol):
    """What a training method gives the engine. A method may also define ``collate(examples, pad_token_id)`` (how
    its examples become a batch; default: ``posttrain.data.batching.collate``) and ``prepare_step(model,
    micro_batches)`` (called before the step's forward passes, for quantities estimated over the whole step batch,
    such as KTO's KL reference point, so that accumulation does not change them). RL methods add
    ``step_metrics()`` (per-step scalars such as generation time, logged like the loss) and ``evaluate(model)``
    (their own held-out evaluation, e.g. task accuracy of greedy answers, instead of the loss on eval examples)."""

    def count(self, batch: dict[str, torch.Tensor]) -> int: ...

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput: ...


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
        self.collate = getattr(method, "collate", collate)
        self.output_dir = Path(config.output_dir)
        self.device = next(model.parameters()).device
        self.lengths = [len(e) for e in train_examples]
        self.step_size = config.batch_size * config.grad_accum_steps
        self.steps_per_epoch = math.ceil(len(train_examples) / self.step_size)
        self.total_steps = config.max_steps or max(1, math.ceil(config.num_epochs * self.steps_per_epoch))
        self.autocast_dtype, self.scaler = self._precision()
        self._check_optimizer_in_backward()
        self.step_in_backward: StepInBackward | None = None  # set up in train()

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
        self.optimizer = self._optimizer()
        preallocate_training_state(self.optimizer, with_grads=self._keep_grad_buffers())
        self.step_in_backward = StepInBackward(self.optimizer) if config.optimizer_in_backward else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        state = self._fresh_state()
        if resume_dir is not None:
            state = load_checkpoint(resume_dir, self.load_model, self.optimizer)
            self.scheduler.load_state_dict(state.pop("scheduler"))
            self._truncate_log(state["step"])
            log.warning("resumed from %s at step %d", resume_dir, state["step"])
        self.state = state
        self.writer = self._tensorboard()
        self.model.train()
        if config.eval_on_start and state["step"] == 0 and self.eval_examples:
            self._log({"step": 0, **self.evaluate()})
        progress = self._progress(state["step"])
        window_start = time.perf_counter()
        if self.step_in_backward:
            self.step_in_backward.attach()
        try:
            self._train_loop(state, progress, window_start)
        finally:
            if self.step_in_backward:
                self.step_in_backward.detach()
        progress.close()
        if self.eval_examples and not (config.eval_steps and state["step"] % config.eval_steps == 0):
            self._eval_and_maybe_stop(state)
        if self.writer is not None:
            self.writer.close()
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
            self._accumulate_window(state, loss, metrics, tokens, grad_norm, finite)
            progress.update(1)
            if state["step"] % config.logging_steps == 0 or state["step"] == self.total_steps:
                elapsed = time.perf_counter() - window_start
                record = self._flush_window(state, elapsed)
                progress.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                self._log(record)
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
            self._to_device(self.collate([self.train_examples[i] for i in chunk], self.pad_token_id))
            for chunk in split_micro_batches(indices, self.lengths, self.config.grad_accum_steps)
        ]
        if hasattr(self.method, "prepare_step"):
            with self._autocast():
                self.method.prepare_step(self.model, micro)
        total_items = sum(self.method.count(b) for b in micro)
        if total_items == 0:
            log.warning("step %d: no item in the step batch carries loss (all masked or filtered); no update",
                        self.state["step"] + 1)
            self.state["window"]["empty"] = self.state["window"].get("empty", 0) + 1
            metrics = self.method.step_metrics() if hasattr(self.method, "step_metrics") else {}
            return 0.0, metrics, 0, 0.0, True
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
        if hasattr(self.method, "step_metrics"):
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
        else:
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
        """Loss and metrics averaged over the whole eval set (item-weighted, like training)."""
        if hasattr(self.method, "evaluate"):
            return self.method.evaluate(self.model)
        was_training = self.model.training
        self.model.eval()
        lengths = [len(e) for e in self.eval_examples]
        order = sorted(range(len(self.eval_examples)), key=lambda i: lengths[i])
        loss_sum, items, sums = 0.0, 0, {}
        for start in range(0, len(order), self.config.eval_batch_size):
            chunk = [self.eval_examples[i] for i in order[start : start + self.config.eval_batch_size]]
            batch = self._to_device(self.collate(chunk, self.pad_token_id))
            with self._autocast():
                if hasattr(self.method, "prepare_step"):
                    self.method.prepare_step(self.model, [batch])
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
        self._log({"step": state["step"], **result})
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
        state = dict(self.state, scheduler=self.scheduler.state_dict())
        directory = self.output_dir / "checkpoints" / f"step_{self.state['step']}"
        return save_checkpoint(directory, self.save_model, self.optimizer, state, self.config.save_total_limit)

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
            clear_run_outputs(out)
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

    # ------------------------------------------------------------------------------------------- logging
    def _fresh_state(self) -> dict:
        return {
            "step": 0, "epoch": 0, "batch_in_epoch": 0, "total_steps": self.total_steps,
            "best_eval_loss": float("inf"), "evals_without_improvement": 0, "stopped": "",
            "nonfinite_in_a_row": 0, "nonfinite_total": 0, "window": _empty_window(),
        }

    def _accumulate_window(self, state, loss, metrics, tokens, grad_norm, finite) -> None:
        window = state["window"]
        if finite:
            window["steps"] += 1
            window["loss"] += loss
            window["grad_norm"] += grad_norm
            for name, value in metrics.items():
                window["metrics"][name] = window["metrics"].get(name, 0.0) + value
        else:
            window["skipped"] += 1
        window["tokens"] += tokens

    def _flush_window(self, state: dict, elapsed: float) -> dict:
        window, n = state["window"], max(state["window"]["steps"], 1)
        record = {
            "step": state["step"],
            "epoch": round(state["step"] / self.steps_per_epoch, 4),
            "loss": window["loss"] / n,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": window["grad_norm"] / n,
            "tokens_per_s": window["tokens"] / max(elapsed, 1e-9),  # non-pad input tokens
            "num_tokens": window["tokens"],
            **{name: value / n for name, value in window["metrics"].items()},
        }
        if window["skipped"]:
            record["skipped_nonfinite_steps"] = window["skipped"]
        if window.get("empty"):
            record["empty_steps"] = window["empty"]  # steps without any item carrying loss (loss 0, no update)
        state["window"] = _empty_window()
        return record

    def _log(self, record: dict) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "log_history.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["step"])
        if not self.config.progress_bar:
            log.info(json.dumps(record))

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from: they will be logged again."""
        path = self.output_dir / "log_history.jsonl"
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _tensorboard(self):
        if not self.config.tensorboard:
            return None
        require("tensorboard", "tensorboard", "tensorboard=true")
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def _progress(self, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=initial, disable=not self.config.progress_bar, desc="train",
                    dynamic_ncols=True)

    # --------------------------------------------------------------------------------------------- set-up
    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW; biases and norm weights (1-D) get no weight decay. Fused kernels where this torch has them.
        A method may give some parameters their own learning rate with ``learning_rates(model) -> {id(param): lr}``
        (PPO's critic); the schedule scales every group alike."""
        base = self.config.learning_rate
        rates = self.method.learning_rates(self.model) if hasattr(self.method, "learning_rates") else {}
        groups: dict[tuple[float, bool], list] = {(base, True): [], (base, False): []}
        for param in self.model.parameters():
            if param.requires_grad:
                groups.setdefault((rates.get(id(param), base), param.dim() >= 2), []).append(param)
        param_groups = [{"params": params, "lr": lr, "weight_decay": self.config.weight_decay if decay else 0.0}
                        for (lr, decay), params in groups.items() if params or lr == base]
        kwargs = dict(lr=base, betas=(self.config.adam_beta1, self.config.adam_beta2), eps=self.config.adam_epsilon)
        try:
            return torch.optim.AdamW(param_groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(param_groups, foreach=True, **kwargs)

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

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then constant, linear decay to 0, or cosine decay to 0 (Loshchilov & Hutter 2017)."""
        warmup = self.config.warmup_steps
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        if self.config.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if self.config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    def _precision(self):
        precision = self.config.precision
        if precision == "auto":
            cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            precision = "bf16" if cuda_bf16 else "fp32"
        if precision == "fp32":
            return None, None
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        return dtype, scaler

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


RUN_OUTPUTS = ("log_history.jsonl", "samples.jsonl", "ppo_metrics.jsonl", "evaluation.json", "checkpoints", "final",
               "tensorboard")


def preallocate_training_state(optimizer: torch.optim.Optimizer, with_grads: bool) -> None:
    """Create AdamW's two moments (and, when they are kept between steps, the gradient buffers) now, before the first
    forward pass: the same zeros the first step would create, but the long-lived buffers then lie together instead
    of in the holes that step 1's freed activations leave, which lowers the peak RSS of every later step
    (docs/benchmarks.md, SFT memory). Loading a checkpoint replaces them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if with_grads:
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
    if type(optimizer) is not torch.optim.AdamW or optimizer.state or optimizer.defaults.get("amsgrad"):
        return
    state = {index: {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                     "exp_avg_sq": torch.zeros_like(param)} for index, param in enumerate(params)}
    # load_state_dict puts "step" where this optimizer keeps it (on the parameter's device for fused kernels)
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def clear_run_outputs(output_dir: Path) -> None:
    """Remove a previous run's outputs (only the names of the output contract, never anything else in the folder)."""
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _empty_window() -> dict:
    return {"steps": 0, "skipped": 0, "loss": 0.0, "grad_norm": 0.0, "tokens": 0, "metrics": {}}
