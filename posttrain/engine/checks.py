"""The engine's rules, apart from its loop: which settings go together, when a run has not really trained, and
which evaluation is the best so far (early stopping)."""

from __future__ import annotations

import logging
import math

from posttrain.engine import distributed, fsdp
from posttrain.errors import ConfigError, PosttrainError

log = logging.getLogger(__name__)


class NonFiniteLossError(PosttrainError):
    pass


def check_optimizer_in_backward(config, scaler) -> None:
    """optimizer_in_backward updates each parameter inside backward: no global clipping, accumulation or loss
    scaling can come between."""
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
    if scaler is not None:
        raise ConfigError("optimizer_in_backward=true does not support precision=fp16 (the loss scaler "
                          "unscales every gradient before one step); use bf16 or fp32")


def check_world(config, method, model, n_examples: int, step_size: int, sharded: bool) -> None:
    """What several processes need: every rank gets at least one example of every step batch (a rank without one
    would leave the others waiting in a method's collectives), and no update inside backward (it would come before
    the gradients are summed over ranks)."""
    world = distributed.world_size()
    if world == 1:
        return
    if config.optimizer_in_backward:
        raise ConfigError(f"optimizer_in_backward=true updates each parameter before its gradient is summed over "
                          f"the {world} processes: set it to false")
    if not method.data_parallel:
        raise ConfigError(f"{type(method).__name__} does not run in several processes yet (its statistics "
                          "over a step batch are one process's): launch it without torchrun")
    if sharded:
        fsdp.check(model, method, config.save_best)
    last = n_examples % step_size
    if 0 < last < world:
        raise ConfigError(
            f"the last step batch of each epoch holds {last} of the {n_examples} examples, fewer "
            f"than the {world} processes: use a training set size that leaves 0 or at least {world} examples over "
            f"a multiple of {step_size} (batch_size x grad_accum_steps x processes)")


def check_skipped_steps(state: dict, warn_fraction: float) -> None:
    """At the end of a run: fail when every step was skipped as non-finite (nothing was trained), warn when more
    than ``warn_fraction`` of them were."""
    steps, skipped = state["step"], state["nonfinite_total"]
    if steps and skipped >= steps:
        raise NonFiniteLossError(
            f"every one of the {steps} steps had a non-finite loss or gradient: nothing was trained. "
            "Check the data (NaN or infinite values) and lower learning_rate")
    if steps and skipped > warn_fraction * steps:
        log.warning("%d of %d steps were skipped for a non-finite loss or gradient (more than "
                    "warn_nonfinite_fraction=%s): check the data and the learning rate", skipped, steps, warn_fraction)


def track_best(state: dict, result: dict, key: str, greater: bool, patience: int | None) -> bool:
    """Compare the evaluation ``result`` with the best so far on ``key`` (``metric_for_best_model``); returns True
    when it is the new best. After ``patience`` evaluations in a row without one, ``state["stopped"]`` says why."""
    if key not in result:  # a method's own evaluation may have no loss: no early stopping on it
        if key != "eval_loss":
            raise ConfigError(f"metric_for_best_model: the evaluation has no {key!r}; it has "
                              f"{', '.join(k for k in result if k.startswith('eval_'))}")
        return False
    if "best_metric" not in state:  # a checkpoint written before metric_for_best_model existed
        state["best_metric"] = state.pop("best_eval_loss", None)
    best, value = state["best_metric"], result[key]
    limit = best if best is not None else (-math.inf if greater else math.inf)
    if (value > limit) if greater else (value < limit):  # NaN never improves
        state["best_metric"], state["best_step"], state["evals_without_improvement"] = value, state["step"], 0
        return True
    state["evals_without_improvement"] += 1
    if patience and state["evals_without_improvement"] >= patience:
        state["stopped"] = f"early stop: {key} did not improve for {patience} evaluations"
        log.warning("step %d: %s", state["step"], state["stopped"])
    return False
