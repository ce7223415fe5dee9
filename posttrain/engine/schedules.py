"""Learning-rate schedules: the factor that multiplies the peak learning rate at each optimizer step.

Every schedule starts with the same linear warmup, ``(step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``;
after it, ``s = step - warmup_steps`` steps are done out of ``D = max(1, total_steps - warmup_steps)`` and
``p = s / D`` is the progress. One pure function per schedule, one table (``LR_SCHEDULES``) is the dispatch:

| name            | factor after warmup                                                    | parameters              |
|-----------------|------------------------------------------------------------------------|-------------------------|
| constant        | 1                                                                      |                         |
| linear          | max(0, 1 - p)                                                          |                         |
| cosine          | (1 + cos(pi min(p, 1))) / 2                  (Loshchilov & Hutter 2017)|                         |
| step            | gamma ^ floor(s / step_size)                 (torch's StepLR)          | lr_step_size, lr_gamma  |
| cosine_restarts | (1 + cos(pi ((c p) mod 1))) / 2, 0 once p >= 1 (SGDR, hard restarts)   | lr_num_cycles           |
| wsd             | 1 until p >= 1 - f, then a decay to 0 over the last f of D steps       | lr_decay_fraction,      |
|                 | (warmup-stable-decay: Hu et al. 2024, MiniCPM; Hägele et al. 2024)     | lr_decay_shape          |
| inverse_sqrt    | sqrt(tau / (s + tau))                        (Vaswani et al. 2017)     | lr_timescale            |

Each function takes ``(step, total_steps, warmup_steps, params)`` where ``params`` is an ``LRScheduleParams``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRScheduleParams:
    """The extra parameters of the schedules that have some (EngineConfig's lr_* options)."""

    step_size: int | None = None  # step: steps between decays; None: a tenth of the post-warmup steps
    gamma: float = 0.1  # step: the factor applied at each decay
    num_cycles: int = 1  # cosine_restarts: cosine cycles over the post-warmup steps
    decay_fraction: float = 0.1  # wsd: share of the post-warmup steps spent decaying
    decay_shape: str = "linear"  # wsd: linear, cosine or 1-sqrt
    timescale: int | None = None  # inverse_sqrt: tau; None: warmup_steps, or 10000 without warmup


def _progress(step: int, total_steps: int, warmup_steps: int) -> float:
    return (step - warmup_steps) / max(1, total_steps - warmup_steps)


def constant_factor(step: int, total_steps: int, warmup_steps: int, params: LRScheduleParams) -> float:
    return 1.0


def linear_factor(step: int, total_steps: int, warmup_steps: int, params: LRScheduleParams) -> float:
    return max(0.0, 1.0 - _progress(step, total_steps, warmup_steps))


def cosine_factor(step: int, total_steps: int, warmup_steps: int, params: LRScheduleParams) -> float:
    """Cosine decay to 0 at the last step (Loshchilov & Hutter 2017, SGDR without restarts)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(_progress(step, total_steps, warmup_steps), 1.0)))


def step_decay_factor(step: int, total_steps: int, warmup_steps: int, params: LRScheduleParams) -> float:
    """gamma ^ floor(s / step_size): multiply by gamma every step_size steps after warmup."""
    step_size = params.step_size or max(1, (total_steps - warmup_steps) // 10)
    return params.gamma ** ((step - warmup_steps) // step_size)


def cosine_restarts_factor(step: int, total_steps: int, warmup_steps: int, params: LRScheduleParams) -> float:
    """num_cycles cosine decays, each restarting at the peak (SGDR, Loshchilov & Hutter 2017; transformers'
    cosine_with_restarts); 0 once the last one ends."""
    progress = _progress(step, total_steps, warmup_steps)
    if progress >= 1.0:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * ((params.num_cycles * progress) % 1.0)))


_WSD_DECAYS = {
    "linear": lambda q: 1.0 - q,
    "cosine": lambda q: 0.5 * (1.0 + math.cos(math.pi * q)),
    "1-sqrt": lambda q: 1.0 - math.sqrt(q),  # Hägele et al. 2024 find it the best of these
}


def wsd_factor(step: int, total_steps: int, warmup_steps: int, params: LRScheduleParams) -> float:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM): the peak rate until the last ``decay_fraction`` of the
    post-warmup steps, then a decay to 0 at the last step: q in [0, 1] is the progress through the decay."""
    decay_steps = max(1, round(params.decay_fraction * max(1, total_steps - warmup_steps)))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    return max(0.0, _WSD_DECAYS[params.decay_shape](min(1.0, (step - decay_start) / decay_steps)))


def inverse_sqrt_factor(step: int, total_steps: int, warmup_steps: int, params: LRScheduleParams) -> float:
    """sqrt(tau / (s + tau)): 1 at the end of warmup, then 1/sqrt of the steps (Vaswani et al. 2017's schedule, in
    transformers' form: tau is the timescale)."""
    timescale = params.timescale or warmup_steps or 10_000
    return math.sqrt(timescale / (step - warmup_steps + timescale))


# name -> factor function: EngineConfig.lr_schedule picks one
LR_SCHEDULES = {
    "constant": constant_factor,
    "linear": linear_factor,
    "cosine": cosine_factor,
    "step": step_decay_factor,
    "cosine_restarts": cosine_restarts_factor,
    "wsd": wsd_factor,
    "inverse_sqrt": inverse_sqrt_factor,
}


def schedule_factor(step: int, total_steps: int, warmup_steps: int, schedule: str,
                    params: LRScheduleParams | None = None) -> float:
    """The factor at 0-based ``step``: linear warmup, then ``LR_SCHEDULES[schedule]``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return LR_SCHEDULES[schedule](step, total_steps, warmup_steps, params or LRScheduleParams())
