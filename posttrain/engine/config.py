"""The engine's part of every method's config: steps, batches, optimizer, schedule, precision, memory, evaluation,
checkpoints and logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from posttrain.config import option
from posttrain.engine.schedules import LRScheduleParams
from posttrain.engine.trackers import TrackerName


@dataclass
class DistributedConfig:
    """Several processes on torchrun (docs/distributed.md); read only when WORLD_SIZE > 1."""

    backend: Literal["auto", "gloo", "nccl"] = option("auto", help="the collective backend; auto: nccl when the model "
                                                                   "is on CUDA, gloo on CPU")
    strategy: Literal["ddp", "fsdp"] = option("ddp", help="ddp: every process holds the whole model and its "
                                                          "optimizer state; gradients are summed over processes once "
                                                          "per step. fsdp: each process holds 1/N of the weights, "
                                                          "gradients and AdamW state (FSDP2 per decoder layer; SFT, "
                                                          "DPO, KTO, reward models, GRPO / RLOO / REINFORCE and "
                                                          "PPO, full or LoRA)")
    timeout_s: float = option(600.0, min=1, help="seconds a collective waits for the other processes before the run "
                                                 "stops with an error naming the process that failed")


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
    lr_schedule: Literal["constant", "linear", "cosine", "step", "cosine_restarts", "wsd", "inverse_sqrt"] = option(
        "cosine", help="after warmup: constant; a linear or cosine decay to 0 at the last step; step (x lr_gamma every "
                       "lr_step_size steps); cosine_restarts (lr_num_cycles cosine decays); wsd (warmup-stable-decay: "
                       "constant, then lr_decay_shape to 0 over the last lr_decay_fraction of the steps); "
                       "inverse_sqrt (sqrt(lr_timescale / (steps after warmup + lr_timescale))); docs/training.md")
    lr_step_size: int | None = option(None, min=1, help="lr_schedule step: optimizer steps between decays; None: a "
                                                        "tenth of the steps after warmup")
    lr_gamma: float = option(0.1, min=0, max=1, help="lr_schedule step: the factor applied at each decay")
    lr_num_cycles: int = option(1, min=1, help="lr_schedule cosine_restarts: cosine cycles, each restarting at "
                                               "learning_rate")
    lr_decay_fraction: float = option(0.1, min=0, max=1, help="lr_schedule wsd: share of the steps after warmup "
                                                              "spent decaying to 0")
    lr_decay_shape: Literal["linear", "cosine", "1-sqrt"] = option(
        "linear", help="lr_schedule wsd: the shape of the final decay")
    lr_timescale: int | None = option(None, min=1, help="lr_schedule inverse_sqrt: the timescale tau in steps; None: "
                                                        "warmup_steps, or 10000 without warmup")
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
    patience: int | None = option(None, min=1, help="stop after this many evaluations in a row in which "
                                                    "metric_for_best_model did not improve; None: never stop early")
    metric_for_best_model: str = option("eval_loss", help="the evaluation figure that early stopping and save_best "
                                                          "follow, e.g. eval_accuracy (the eval_ prefix may be left "
                                                          "out)")
    greater_is_better: bool | None = option(None, help="whether a higher metric_for_best_model is better; None: "
                                                       "lower is better for names ending in loss, mse, mae, ece or "
                                                       "perplexity, higher for any other")
    save_best: bool = option(False, help="write the model of the best evaluation so far (by metric_for_best_model) to "
                                         "output_dir/best/, kept whatever save_total_limit deletes")
    save_steps: int | None = option(None, min=1, help="write a checkpoint (checkpoints/step_N/) every N optimizer "
                                                      "steps; None: none, only final/")
    save_total_limit: int | None = option(2, min=1, help="checkpoints kept, the newest (older ones are deleted); None: "
                                                         "keep all")
    warn_nonfinite_fraction: float = option(0.05, min=0, max=1, help="warn at the end of a run when more than this "
                                                                     "share of its steps was skipped as non-finite")
    max_consecutive_nonfinite: int = option(5, min=1, help="optimizer steps in a row with a non-finite loss or "
                                                           "gradient (each skipped) before the run stops with an error")
    resume_from: str | None = option(None, help="a checkpoint folder to resume from; None: re-running into the same "
                                                "output_dir resumes from its newest checkpoint by itself")
    overwrite_output_dir: bool = option(False, help="delete a previous run's outputs in output_dir and start over, "
                                                    "instead of resuming or refusing")
    shuffle: bool = option(True, help="shuffle the training examples each epoch (seeded by seed and the epoch)")
    bucket_window: int = option(16, min=1, help="step batches per length-sorting window: examples of similar length "
                                                "share a batch, which cuts padding")
    report_to: list[TrackerName] | TrackerName = option(default_factory=lambda: ["jsonl"], help="where the logged records go besides "
                                  "log_history.jsonl (always written): any of jsonl, tensorboard, wandb, trackio, "
                                  "mlflow; each needs its extra (docs/trackers.md)")
    tensorboard: bool = option(False, help="the same as adding tensorboard to report_to")
    progress_bar: bool = option(True, help="show a progress bar; false: log each record as a JSON line instead")
    distributed: DistributedConfig = option(
        default_factory=DistributedConfig, help="data-parallel training when launched by torchrun: backend, strategy, "
                                                "collective timeout (docs/distributed.md)")

    def tracker_names(self) -> list[str]:
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        return [*names, "tensorboard"] if self.tensorboard else names

    def best_metric(self) -> tuple[str, bool]:
        """``(eval record key, greater is better)`` of metric_for_best_model."""
        name = self.metric_for_best_model
        key = name if name.startswith("eval_") else f"eval_{name}"
        if self.greater_is_better is not None:
            return key, self.greater_is_better
        return key, not key.endswith(("loss", "mse", "mae", "ece", "perplexity"))

    def lr_schedule_params(self) -> LRScheduleParams:
        return LRScheduleParams(step_size=self.lr_step_size, gamma=self.lr_gamma, num_cycles=self.lr_num_cycles,
                                decay_fraction=self.lr_decay_fraction, decay_shape=self.lr_decay_shape,
                                timescale=self.lr_timescale)
