"""Knowledge distillation: divergences between a teacher's and a student's next-token distributions.

Notation (docs/notation.md, docs/distillation.md): at each position the teacher's logits ``z^t`` and the student's
``z^s`` over the vocabulary V, softened by a temperature T:

    p = softmax(z^t / T)                         (teacher)
    q = softmax(z^s / T)                         (student)

    forward KL        KL(p || q) = sum_v p_v (log p_v - log q_v)          mass-covering (Hinton et al. 2015)
    reverse KL        KL(q || p) = sum_v q_v (log q_v - log p_v)          mode-seeking  (Gu et al. 2024, MiniLLM)
    generalized JSD   JSD_beta   = beta KL(p || m) + (1 - beta) KL(q || m),   m = beta p + (1 - beta) q
                                                                          (Agarwal et al. 2024, GKD, Eq. 1)
    total variation   TV(p, q)   = 1/2 sum_v |p_v - q_v|                  (Wen et al. 2023, f-divergence KD)

As in TRL's ``generalized_jsd_loss``, beta = 0 *is* forward KL and beta = 1 *is* reverse KL (JSD_beta itself goes to
0 at both ends; JSD_beta / beta -> KL(p || q) as beta -> 0). Every divergence is multiplied by T^2 (Hinton et al.
2015, https://arxiv.org/abs/1503.02531): the soft targets' gradient scales as 1/T^2, so the factor keeps its size
comparable to the hard-label term as T changes. At T = 1 the values are TRL's per token.

Logit distillation's per-token loss mixes the divergence with the usual next-token cross-entropy on the labels:

    l_t = alpha * T^2 * D(p_t, q_t) + (1 - alpha) * (- log softmax(z^s_t)[y_t])          (CE at T = 1)

Top-k teacher truncation (``teacher_top_k = k > 0``): only the teacher's k most likely tokens I_t and the mass left
over, r_t = 1 - sum_{v in I_t} p_v, are kept (what an offline KD cache stores: k + 1 numbers per token instead of
V). Both distributions are collapsed onto the k + 1 bins I_t + {rest}, and D is taken between the collapsed ones.
That is exact on the teacher's support I_t and merges the tail into one bin; by the data-processing inequality the
collapsed KL never exceeds the full one, and equals it when the student's tail is proportional to the teacher's.

``chunked_distillation_loss`` computes the summed loss from both models' last hidden states, a chunk of positions at
a time, and its gradient in the same pass: ``(N, V)`` logits exist for one chunk only, never for the whole batch, and
between forward and backward only the ``(N, H)`` and ``(V, H)`` gradients are kept. Each projection runs once (two
forward, two for the gradient), as many as with full logits, without their ``(N, V)`` temporaries.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from posttrain.math.logprobs import _matmul_dtype, _project, _upcast, _upcast_dtype, grad_buffer

# Rows per chunk: one chunk makes about six (rows, V) fp32 temporaries (both models' logits, log-softmaxes,
# probabilities), 50 MB each for 256 rows of a 49k vocabulary.
DEFAULT_DISTILL_CHUNK_SIZE = 256
_FLOOR = 1e-30  # a collapsed "rest" bin's smallest probability, so its log stays finite (fp32's tiny is 1.2e-38)


def forward_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v): the teacher's mass must all be covered (Hinton et al. 2015).

    Shapes: log-probs ``(..., V)`` of the student q and teacher p -> ``(...)``."""
    return (teacher_logps.exp() * (teacher_logps - student_logps)).sum(-1)


def reverse_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_v q_v (log q_v - log p_v): the student may drop teacher modes but not add mass where the
    teacher has none (Gu et al. 2024, MiniLLM, https://arxiv.org/abs/2306.08543). Shapes as ``forward_kl``."""
    return (student_logps.exp() * (student_logps - teacher_logps)).sum(-1)


def generalized_jsd(student_logps: torch.Tensor, teacher_logps: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """beta KL(p || m) + (1 - beta) KL(q || m) with m = beta p + (1 - beta) q (Agarwal et al. 2024, "On-Policy
    Distillation of Language Models", https://arxiv.org/abs/2306.13649, Eq. 1); beta = 0 gives ``forward_kl`` and
    beta = 1 ``reverse_kl`` exactly, as TRL's ``generalized_jsd_loss`` does. Shapes as ``forward_kl``."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logps, teacher_logps)
    if beta == 1.0:
        return reverse_kl(student_logps, teacher_logps)
    mixture_logps = torch.logaddexp(student_logps + math.log1p(-beta), teacher_logps + math.log(beta))  # log m
    kl_teacher = (teacher_logps.exp() * (teacher_logps - mixture_logps)).sum(-1)
    kl_student = (student_logps.exp() * (student_logps - mixture_logps)).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student


def total_variation(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = 1/2 sum_v |p_v - q_v|, bounded in [0, 1] (Wen et al. 2023, "f-Divergence Minimization for
    Sequence-Level Knowledge Distillation", https://arxiv.org/abs/2307.15190). Shapes as ``forward_kl``."""
    return 0.5 * (student_logps.exp() - teacher_logps.exp()).abs().sum(-1)


# divergence name -> function(student_logps, teacher_logps, beta); beta only matters to the JSD
DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "forward_kl": lambda s, t, beta: forward_kl(s, t),
    "reverse_kl": lambda s, t, beta: reverse_kl(s, t),
    "jsd": generalized_jsd,
    "tv": lambda s, t, beta: total_variation(s, t),
}


def top_k_teacher(teacher_logps: torch.Tensor, teacher_top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely tokens and its log-probs on the k + 1 bins (those tokens, then the rest).

    Shapes: ``(N, V)`` -> log-probs ``(N, k + 1)`` (last column: log r, r = 1 - sum of the top k), indices ``(N, k)``.
    These k + 1 values are what an offline cache needs to store per token."""
    top_logps, indices = teacher_logps.topk(teacher_top_k, dim=-1)
    return torch.cat([top_logps, _log_rest(top_logps)], dim=-1), indices


def collapse_to_bins(logps: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """A distribution's log-probs on the bins ``indices`` + {the rest}: ``(N, V)``, ``(N, k)`` -> ``(N, k+1)``."""
    kept = logps.gather(-1, indices)
    return torch.cat([kept, _log_rest(kept)], dim=-1)


def _log_rest(kept_logps: torch.Tensor) -> torch.Tensor:
    """log(1 - sum_k exp(l_k)) as ``(N, 1)``: log(-expm1(logsumexp l)) keeps precision when the kept mass is near 1."""
    kept_mass_log = torch.logsumexp(kept_logps, dim=-1, keepdim=True).clamp(max=0.0)
    return torch.log((-torch.expm1(kept_mass_log)).clamp(min=_FLOOR))


def divergence_from_logps(student_logps: torch.Tensor, teacher_logps: torch.Tensor, divergence: str = "forward_kl",
                          beta: float = 0.5, teacher_top_k: int = 0) -> torch.Tensor:
    """D(p, q) from log-probs ``(N, V)`` -> ``(N,)``, on the teacher's top-k bins when ``teacher_top_k`` > 0; no T^2."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}: expected one of {', '.join(DIVERGENCES)}")
    if teacher_top_k:
        teacher_logps, indices = top_k_teacher(teacher_logps, min(teacher_top_k, teacher_logps.shape[-1]))
        student_logps = collapse_to_bins(student_logps, indices)
    return DIVERGENCES[divergence](student_logps, teacher_logps, beta)


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, divergence: str = "forward_kl",
                     beta: float = 0.5, temperature: float = 1.0, teacher_top_k: int = 0) -> torch.Tensor:
    """T^2 D(softmax(z^t / T), softmax(z^s / T)) per row, in >= fp32. Shapes: logits ``(N, V)`` each -> ``(N,)``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the two models must share the vocabulary")
    student_logps = torch.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    teacher_logps = torch.log_softmax(_upcast(teacher_logits) / temperature, dim=-1)
    return temperature ** 2 * divergence_from_logps(student_logps, teacher_logps, divergence, beta, teacher_top_k)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 1.0, alpha: float = 0.5, divergence: str = "forward_kl",
                      beta: float = 0.5, teacher_top_k: int = 0) -> torch.Tensor:
    """alpha T^2 D(p_T, q_T) + (1 - alpha) CE(z^s, y) per row (Hinton et al. 2015 with D = forward KL).

    Shapes: logits ``(N, V)`` each, labels ``(N,)`` -> ``(N,)``. The cross-entropy is at temperature 1."""
    soft = token_divergence(student_logits, teacher_logits, divergence, beta, temperature, teacher_top_k)
    hard = -torch.log_softmax(_upcast(student_logits), dim=-1).gather(-1, labels.long()[:, None]).squeeze(-1)
    return alpha * soft + (1 - alpha) * hard


def cached_token_divergence(student_logits: torch.Tensor, teacher_bin_logps: torch.Tensor,
                            teacher_indices: torch.Tensor, divergence: str = "forward_kl", beta: float = 0.5,
                            temperature: float = 1.0) -> torch.Tensor:
    """T^2 D between a teacher's stored top-k bins (``top_k_teacher`` at temperature T: an offline cache) and the
    student collapsed onto the same bins; equals ``token_divergence(..., teacher_top_k=k)`` on the live teacher.

    Shapes: student logits ``(N, V)``, teacher bin log-probs ``(N, k + 1)``, teacher indices ``(N, k)`` -> ``(N,)``."""
    student_logps = torch.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    student_bins = collapse_to_bins(student_logps, teacher_indices.long())
    return temperature ** 2 * DIVERGENCES[divergence](student_bins, teacher_bin_logps, beta)


@torch.no_grad()
def chunked_top_k_teacher(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, teacher_top_k: int,
                          temperature: float = 1.0, teacher_bias: torch.Tensor | None = None,
                          chunk_size: int = DEFAULT_DISTILL_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_k_teacher`` of softmax(z^t / T) from hidden states, a chunk of rows at a time (what an offline cache
    stores). Shapes: ``(N, H)``, ``(V, H)`` -> bin log-probs ``(N, k + 1)`` in >= fp32 and indices ``(N, k)``."""
    project = _teacher_logits(teacher_hidden, teacher_weight, teacher_bias)
    k = min(teacher_top_k, teacher_weight.shape[0])
    parts = [top_k_teacher(torch.log_softmax(project(start, min(start + chunk_size, teacher_hidden.shape[0]))
                                             / temperature, dim=-1), k)
             for start in range(0, teacher_hidden.shape[0], chunk_size)]
    if not parts:
        dtype = _upcast_dtype(teacher_hidden.dtype)
        return teacher_hidden.new_zeros(0, k + 1, dtype=dtype), teacher_hidden.new_zeros(0, k, dtype=torch.long)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _teacher_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """rows [start, stop) -> their teacher logits ``(stop - start, V)`` in >= fp32 (the live teacher of a chunk)."""
    proj = weight.to(_matmul_dtype(hidden))
    return lambda start, stop: _upcast(_project(hidden[start:stop].to(proj.dtype), proj, bias))


class DistillationLoss(NamedTuple):
    loss_sum: torch.Tensor  # scalar sum_t [alpha T^2 D_t - (1 - alpha) log q(y_t)], differentiable w.r.t. the student
    divergence: torch.Tensor  # (N,) T^2 D(p_t, q_t), no gradient (a metric)
    logps: torch.Tensor  # (N,) log q(y_t) at T = 1, no gradient (a metric)


def _chunk_terms(student_logits, teacher, targets, divergence, beta, temperature, teacher_top_k):
    """One chunk's per-row divergence and label log-prob, from its logits; ``teacher``: its logits, or its cached
    (bin log-probs, indices)."""
    if isinstance(teacher, tuple):
        div = cached_token_divergence(student_logits, *teacher, divergence, beta, temperature)
    else:
        div = token_divergence(student_logits, teacher, divergence, beta, temperature, teacher_top_k)
    logps = student_logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(student_logits, dim=-1)
    return div, logps


class _ChunkedDistillationLoss(torch.autograd.Function):
    """The summed loss chunk by chunk, with its gradient computed in the same pass (the loss is a scalar, so backward
    only scales it: Liger-kernel's fused linear cross-entropy, Hsu et al. 2024, https://arxiv.org/abs/2410.10989).
    Each chunk's logit gradient comes from autograd on ``_chunk_terms``, so the chunked and full computations are one
    function. Between forward and backward it keeps the (N, H) and (V, H) gradients, never a (N, V) tensor."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, teacher_chunk, targets, options, want_grad, in_place):
        n, alpha = s_hidden.shape[0], options["alpha"]
        dtype = _upcast_dtype(s_hidden.dtype)
        div, logps = s_hidden.new_empty(n, dtype=dtype), s_hidden.new_empty(n, dtype=dtype)
        grad_h = grad_w = grad_b = None  # only for the student tensors that need one (a LoRA student's head does not)
        if want_grad and s_hidden.requires_grad:
            grad_h = torch.empty_like(s_hidden)
        if want_grad and s_weight.requires_grad:
            in_place = in_place and s_weight.is_leaf and s_weight.dtype == _upcast_dtype(s_weight.dtype)
            grad_w = torch.zeros_like(s_weight, dtype=_upcast_dtype(s_weight.dtype))
        if want_grad and s_bias is not None and s_bias.requires_grad:
            grad_b = torch.zeros_like(s_bias, dtype=_upcast_dtype(s_bias.dtype))
        s_proj = s_weight.to(_matmul_dtype(s_hidden))
        terms = {k: options[k] for k in ("divergence", "beta", "temperature", "teacher_top_k")}
        for start in range(0, n, options["chunk_size"]):
            stop = min(start + options["chunk_size"], n)
            h = s_hidden[start:stop].to(s_proj.dtype)
            s_logits = _upcast(_project(h, s_proj, s_bias))  # (n_chunk, V)
            t_logits = teacher_chunk(start, stop)  # its logits, or its cached top-k bins
            if not want_grad:
                div[start:stop], logps[start:stop] = _chunk_terms(s_logits, t_logits, targets[start:stop], **terms)
                continue
            with torch.enable_grad():
                s_logits.requires_grad_(True)
                chunk_div, chunk_logps = _chunk_terms(s_logits, t_logits, targets[start:stop], **terms)
                (grad_logits,) = torch.autograd.grad((alpha * chunk_div - (1 - alpha) * chunk_logps).sum(), s_logits)
            div[start:stop], logps[start:stop] = chunk_div.detach(), chunk_logps.detach()
            grad_logits = grad_logits.to(s_proj.dtype)
            if grad_h is not None:
                grad_h[start:stop] = grad_logits @ s_proj
            if grad_w is not None:
                grad_w.add_((grad_logits.t() @ h).to(grad_w.dtype))  # summed over chunks in >= fp32
            if grad_b is not None:
                grad_b += grad_logits.to(grad_b.dtype).sum(0)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (s_weight.dtype, None if s_bias is None else s_bias.dtype)
        ctx.grad_owner = s_weight if grad_w is not None and in_place else None
        ctx.mark_non_differentiable(div, logps)
        return (alpha * div - (1 - alpha) * logps).sum(), div, logps

    @staticmethod
    def backward(ctx, grad_loss, _grad_div, _grad_logps):
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None  # a second backward would need the forward again
        if grad_h is not None:
            grad_h = grad_h.mul_(grad_loss.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_loss.to(grad_w.dtype))
            if ctx.grad_owner is not None:  # straight into .grad: autograd gets None (see chunked_token_logps)
                grad_buffer(ctx.grad_owner).add_(grad_w)
                grad_w = None
            else:
                grad_w = grad_w.to(ctx.dtypes[0])
        if grad_b is not None:
            grad_b = grad_b.mul_(grad_loss.to(grad_b.dtype)).to(ctx.dtypes[1])
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_distillation_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                              teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, targets: torch.Tensor,
                              alpha: float = 1.0, divergence: str = "forward_kl", beta: float = 0.5,
                              temperature: float = 1.0, teacher_top_k: int = 0,
                              student_bias: torch.Tensor | None = None,
                              teacher_bias: torch.Tensor | None = None, chunk_size: int = DEFAULT_DISTILL_CHUNK_SIZE,
                              accumulate_grad_in_place: bool = False) -> DistillationLoss:
    """sum_t [alpha T^2 D(p_t, q_t) - (1 - alpha) log q(y_t)] from hidden states, a chunk of rows at a time.

    Shapes: student_hidden ``(N, H_s)``, student_weight ``(V, H_s)``, teacher_hidden ``(N, H_t)``, teacher_weight
    ``(V, H_t)``, targets ``(N,)`` -> a scalar and two ``(N,)`` metric tensors, in >= fp32. Equal to
    ``distillation_loss(...).sum()`` on the full logits, gradients included; they flow to the student's hidden states,
    weight and bias only (the teacher is a constant). The gradient is computed during the forward pass (when grad is
    enabled and the student needs one), so call backward once. ``accumulate_grad_in_place``: as
    ``chunked_token_logps``."""
    if teacher_hidden.shape[0] != student_hidden.shape[0]:
        raise ValueError(f"expected hidden states (N, H) for both models, got {tuple(student_hidden.shape)} and "
                         f"{tuple(teacher_hidden.shape)}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student head has {student_weight.shape[0]} tokens, teacher head {teacher_weight.shape[0]}:"
                         " distillation needs one vocabulary")
    detach = (lambda t: None if t is None else t.detach())
    teacher_chunk = _teacher_logits(teacher_hidden.detach(), teacher_weight.detach(), detach(teacher_bias))
    return _chunked(student_hidden, student_weight, student_bias, teacher_chunk, targets, alpha, divergence, beta,
                    temperature, teacher_top_k, chunk_size, accumulate_grad_in_place)


def chunked_cached_distillation_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                                     teacher_bin_logps: torch.Tensor, teacher_indices: torch.Tensor,
                                     targets: torch.Tensor, alpha: float = 1.0, divergence: str = "forward_kl",
                                     beta: float = 0.5, temperature: float = 1.0,
                                     student_bias: torch.Tensor | None = None,
                                     chunk_size: int = DEFAULT_DISTILL_CHUNK_SIZE,
                                     accumulate_grad_in_place: bool = False) -> DistillationLoss:
    """``chunked_distillation_loss`` against a teacher given by its cached top-k bins (``chunked_top_k_teacher`` at the
    same T) instead of its hidden states: offline KD, no teacher in memory. Equals the live loss with
    ``teacher_top_k = k``. Shapes: student ``(N, H)``, ``(V, H)``; teacher ``(N, k + 1)``, ``(N, k)``; targets
    ``(N,)``."""
    if teacher_bin_logps.shape[0] != student_hidden.shape[0] or \
            teacher_indices.shape != (teacher_bin_logps.shape[0], teacher_bin_logps.shape[-1] - 1):
        raise ValueError(f"expected teacher bins (N, k + 1) and indices (N, k) for N = {student_hidden.shape[0]} rows,"
                         f" got {tuple(teacher_bin_logps.shape)} and {tuple(teacher_indices.shape)}")
    bins, indices = teacher_bin_logps.detach(), teacher_indices.detach().long()
    return _chunked(student_hidden, student_weight, student_bias, lambda start, stop: (bins[start:stop],
                    indices[start:stop]), targets, alpha, divergence, beta, temperature, 0, chunk_size,
                    accumulate_grad_in_place)


def _chunked(student_hidden, student_weight, student_bias, teacher_chunk, targets, alpha, divergence, beta,
             temperature, teacher_top_k, chunk_size, accumulate_grad_in_place) -> DistillationLoss:
    if student_hidden.dim() != 2 or targets.shape != student_hidden.shape[:1]:
        raise ValueError(f"expected student hidden states (N, H) and targets (N,), got {tuple(student_hidden.shape)} "
                         f"and {tuple(targets.shape)}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}: expected one of {', '.join(DIVERGENCES)}")
    student = [student_hidden, student_weight] + ([student_bias] if student_bias is not None else [])
    want_grad = torch.is_grad_enabled() and any(t.requires_grad for t in student)
    options = {"alpha": float(alpha), "divergence": divergence, "beta": float(beta), "temperature": float(temperature),
               "teacher_top_k": int(teacher_top_k), "chunk_size": int(chunk_size)}
    return DistillationLoss(*_ChunkedDistillationLoss.apply(
        student_hidden, student_weight, student_bias, teacher_chunk, targets.long(), options, want_grad,
        accumulate_grad_in_place))
