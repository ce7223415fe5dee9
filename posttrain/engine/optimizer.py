"""The optimizer side of a step: AdamW with its parameter groups, the learning-rate schedule, mixed precision, and
the training state created before the first forward pass."""

from __future__ import annotations

import torch

from posttrain.engine.schedules import LRScheduleParams, schedule_factor
from posttrain.errors import ConfigError


def build_optimizer(model, learning_rate: float, weight_decay: float, betas: tuple[float, float], eps: float,
                    learning_rates: dict[int, float]) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D) get no weight decay. Fused kernels where this torch has them.
    ``learning_rates`` gives some parameters their own rate (``{id(param): lr}``, PPO's critic); the schedule scales
    every group alike."""
    groups: dict[tuple[float, bool], list] = {(learning_rate, True): [], (learning_rate, False): []}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((learning_rates.get(id(param), learning_rate), param.dim() >= 2), []).append(param)
    param_groups = [{"params": params, "lr": lr, "weight_decay": weight_decay if decay else 0.0}
                    for (lr, decay), params in groups.items() if params or lr == learning_rate]
    kwargs = dict(lr=learning_rate, betas=betas, eps=eps)
    try:
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(param_groups, foreach=True, **kwargs)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str,
              params: LRScheduleParams | None = None) -> float:
    """Linear warmup, then the schedule named ``schedule`` (posttrain.engine.schedules: constant, linear, cosine,
    step, cosine_restarts, wsd, inverse_sqrt)."""
    return schedule_factor(step, total_steps, warmup_steps, schedule, params)


def autocast_precision(precision: str, device: torch.device):
    """``(autocast dtype or None, GradScaler or None)`` for ``precision``; auto: bf16 autocast on CUDA, fp32 on CPU."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if cuda_bf16 else "fp32"
    if precision == "fp32":
        return None, None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return dtype, scaler


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
