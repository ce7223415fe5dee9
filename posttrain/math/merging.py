"""Model-merging rules on one parameter tensor at a time (every input tensor has the same shape ``(*S)``).

Notation: ``params[i]`` is model i's tensor theta_i, ``weights[i]`` its weight w_i, ``base`` the common ancestor
theta_0, ``tau_i = theta_i - theta_0`` its task vector. Arithmetic runs in float32 (float64 when the inputs are);
callers cast the result back. ``merge_tensors`` is the one name -> rule dispatch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

METHODS = ("linear", "task_arithmetic", "ties", "dare", "slerp")


def _work(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)


def _weighted_sum(tensors, weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i x_i, accumulated one input at a time: memory is one tensor, not N (models stream tensor by tensor,
    and an embedding matrix can be the size of many layers)."""
    total = None
    for tensor, weight in zip(tensors, weights):
        total = _work(tensor) * weight if total is None else total.add_(_work(tensor), alpha=weight)
    return total


def weighted_average(params: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Model soup (Wortsman et al. 2022, https://arxiv.org/abs/2203.05482): theta = sum_i w_i theta_i / sum_i w_i
    (without ``normalize``: sum_i w_i theta_i). Equal weights give the uniform soup."""
    merged = _weighted_sum(params, weights)
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ValueError("weighted_average: the weights sum to zero")
        merged = merged.div_(total)
    return merged


def task_vectors(base: torch.Tensor, params: Sequence[torch.Tensor]):
    """tau_i = theta_i - theta_0 (Ilharco et al. 2023), one at a time (a generator of ``(*S)`` tensors)."""
    base = _work(base)
    return (_work(p) - base for p in params)


def task_arithmetic(base: torch.Tensor, params: Sequence[torch.Tensor], weights: Sequence[float],
                    scale: float = 1.0) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2023, https://arxiv.org/abs/2212.04089):
    theta = theta_0 + lambda sum_i w_i tau_i, with lambda = ``scale``."""
    return _work(base) + scale * _weighted_sum(task_vectors(base, params), weights)


def trim_by_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES step 1, trim (Yadav et al. 2023): keep the k = floor(density * numel) entries of largest |delta|
    (at least one when density > 0), zero the rest."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    if density <= 0 or flat.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * flat.numel()))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k).indices] = True
    return (flat * keep).reshape(delta.shape)


def elect_sign(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """TIES step 2, elect sign: gamma = sign(sum_i tau_i) per entry, the sign of the larger total mass
    (``deltas``: N tensors ``(*S)`` or one ``(N, *S)``, already weighted; a zero total elects +1). Returns ``(*S)``
    of +-1."""
    total = _weighted_sum(deltas, [1.0] * len(deltas))
    return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)


def disjoint_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float], sign: torch.Tensor) -> torch.Tensor:
    """TIES step 3, disjoint merge: tau = sum_{i in A} w_i tau_i / sum_{i in A} w_i, A = {i: sign(tau_i) = gamma}
    per entry (entries no model agrees on stay 0). ``deltas``: unweighted, N tensors ``(*S)`` or one ``(N, *S)``."""
    numerator, denominator = torch.zeros_like(sign), torch.zeros_like(sign)
    for delta, weight in zip(deltas, weights):
        agree = torch.sign(delta) == sign  # zeros (trimmed entries) never agree
        numerator.add_(delta * agree, alpha=weight)
        denominator.add_(agree.to(sign.dtype), alpha=weight)
    return numerator.div_(denominator.masked_fill_(denominator == 0, 1.0))


def dare_drop(delta: torch.Tensor, drop_rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE (Yu et al. 2024, https://arxiv.org/abs/2311.03099): drop each entry with probability p and rescale the
    survivors: tau~ = m * tau / (1 - p), m ~ Bernoulli(1 - p), so E[tau~] = tau."""
    if drop_rate <= 0:
        return delta
    if drop_rate >= 1:
        return torch.zeros_like(delta)
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) >= drop_rate
    return delta * keep.to(delta.dtype) / (1 - drop_rate)


def ties_merge(base: torch.Tensor, params: Sequence[torch.Tensor], weights: Sequence[float], density: float = 0.2,
               scale: float = 1.0, drop_rate: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023, https://arxiv.org/abs/2306.01708): trim each tau_i to its top ``density``
    by magnitude, elect the sign of sum_i w_i tau_i, average the agreeing entries (``disjoint_merge``),
    theta = theta_0 + lambda tau. With ``drop_rate`` > 0 DARE replaces the trim (DARE-TIES)."""
    if drop_rate > 0:
        deltas = [dare_drop(d, drop_rate, generator) for d in task_vectors(base, params)]
    else:
        deltas = [trim_by_magnitude(d, density) for d in task_vectors(base, params)]
    sign = torch.where(_weighted_sum(deltas, weights) >= 0, 1.0, -1.0).to(deltas[0].dtype)
    return _work(base) + scale * disjoint_merge(deltas, weights, sign)


def dare_merge(base: torch.Tensor, params: Sequence[torch.Tensor], weights: Sequence[float], drop_rate: float = 0.9,
               scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE with task arithmetic: theta = theta_0 + lambda sum_i w_i DARE(tau_i) (Yu et al. 2024)."""
    dropped = (dare_drop(d, drop_rate, generator) for d in task_vectors(base, params))
    return _work(base) + scale * _weighted_sum(dropped, weights)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985), each tensor flattened to one vector:
    Omega = arccos(<v0/|v0|, v1/|v1|>), v = sin((1-t) Omega)/sin(Omega) v0 + sin(t Omega)/sin(Omega) v1.
    Nearly colinear inputs (|cos Omega| > ``dot_threshold``), where sin(Omega) -> 0, fall back to (1-t) v0 + t v1;
    so do zero vectors."""
    a, b = _work(v0), _work(v1)
    norm_a, norm_b = a.norm(), b.norm()
    if norm_a < eps or norm_b < eps:
        return (1 - t) * a + t * b
    dot = float(((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        return (1 - t) * a + t * b
    omega = math.acos(dot)
    sin_omega = math.sin(omega)
    return (math.sin((1 - t) * omega) / sin_omega) * a + (math.sin(t * omega) / sin_omega) * b


def merge_tensors(method: str, params: Sequence[torch.Tensor], weights: Sequence[float],
                  base: torch.Tensor | None = None, *, density: float = 1.0, drop_rate: float = 0.0,
                  scale: float = 1.0, t: float = 0.5, normalize: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One tensor merged by ``method`` (one of ``METHODS``): the dispatch every caller goes through.

    ``slerp`` interpolates from ``params[0]`` (t = 0) to ``params[1]`` (t = 1) and needs no base; ``ties`` with
    ``drop_rate`` > 0 is DARE-TIES; ``dare`` is DARE + task arithmetic.
    """
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "linear":
        return weighted_average(params, weights, normalize)
    if method == "slerp":
        if len(params) != 2:
            raise ValueError(f"slerp merges exactly two tensors, got {len(params)}")
        return slerp(t, params[0], params[1])
    if base is None:
        raise ValueError(f"{method} needs a base tensor (task vectors are differences from it)")
    if method == "task_arithmetic":
        return task_arithmetic(base, params, weights, scale)
    if method == "ties":
        return ties_merge(base, params, weights, density, scale, drop_rate, generator)
    return dare_merge(base, params, weights, drop_rate, scale, generator)
