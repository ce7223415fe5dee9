"""Policy-gradient losses and KL estimators, per token or per step, shared by PPO/GRPO (LLM) and the Gymnasium tier.

All return per-element values ``(..., T)``; how they are averaged (per sequence, per token, a constant) is the
trainer's choice and lives in one place there.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ClippedLoss(NamedTuple):
    loss: torch.Tensor  # per element
    clipped: torch.Tensor  # bool per element: the clipped branch was taken (it carries no gradient)
    ratio: torch.Tensor


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        epsilon: float = 0.2, epsilon_high: float | None = None) -> ClippedLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, https://arxiv.org/abs/1707.06347), negated to a loss:

        rho_t = exp(logp_t - old_logp_t)
        L_t   = - min(rho_t A_t, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A_t)

    ``epsilon_high`` defaults to ``epsilon``; a larger one is DAPO's clip-higher (Yu et al. 2025).
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps.detach())
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon_high) * advantages
    return ClippedLoss(-torch.min(unclipped, clipped), clipped < unclipped, ratio)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip_range: float | None = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO value loss 0.5 * max((V - R)^2, (V_clip - R)^2) with V_clip = old_V + clip(V - old_V, -c, c).

    Returns per-element loss and a bool of where the clipped branch was larger. ``clip_range=None``: plain MSE / 2.
    """
    unclipped = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.max(unclipped, clipped), clipped > unclipped


def policy_gradient_loss(logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE (Williams 1992): L_t = - A_t log pi(a_t | s_t), advantages treated as constants."""
    return -advantages.detach() * logps


LOSS_AGGREGATIONS = ("grpo", "token", "dr_grpo")


def aggregated_loss_sum(token_losses: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """The numerator of a sequence batch's loss; the engine divides it by ``loss_normaliser`` summed over the whole
    optimizer step, so accumulation and batch splitting do not change the loss.

        grpo     sum_i (1/|o_i|) sum_t l_it       / N          per-sequence mean, then mean (Shao et al. 2024)
        token    sum_i sum_t l_it                 / sum_i |o_i| mean over all tokens of the step (DAPO, Yu et al. 2025)
        dr_grpo  sum_i sum_t l_it                 / (N L)       constant divisor, L = max completion length
                                                                (Dr. GRPO, Liu et al. 2025: no length bias)
    ``token_losses``, ``mask``: ``(N, T)``.
    """
    mask = mask.to(token_losses.dtype)
    if aggregation == "grpo":
        return ((token_losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
    if aggregation in ("token", "dr_grpo"):
        return (token_losses * mask).sum()
    raise ValueError(f"aggregation={aggregation!r}: expected one of {', '.join(LOSS_AGGREGATIONS)}")


def loss_normaliser(mask: torch.Tensor, aggregation: str, max_completion_length: int) -> int:
    """The item count that ``aggregated_loss_sum`` is divided by (see there): sequences, tokens, or sequences x L."""
    if aggregation == "grpo":
        return int(mask.shape[0])
    if aggregation == "token":
        return int(mask.sum())
    if aggregation == "dr_grpo":
        return int(mask.shape[0]) * max_completion_length
    raise ValueError(f"aggregation={aggregation!r}: expected one of {', '.join(LOSS_AGGREGATIONS)}")


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman 2020, http://joschu.net/blog/kl-approx.html),
    with log r = ref_logp - logp:

        k1 = -log r            (unbiased, high variance, can be negative)
        k2 = (log r)^2 / 2     (biased, low variance)
        k3 = (r - 1) - log r   (unbiased, low variance, always >= 0; GRPO's choice)
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: expected {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](ref_logps - logps)


KL_ESTIMATORS = {  # log r = ref_logp - logp -> the estimate of KL(pi || pi_ref) per token
    "k1": lambda log_ratio: -log_ratio,
    "k2": lambda log_ratio: 0.5 * log_ratio**2,
    "k3": lambda log_ratio: torch.expm1(log_ratio) - log_ratio,
}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = - sum_a pi(a) log pi(a) over the last dimension (small action spaces; for LLM vocabularies use
    posttrain.math.logprobs.chunked_token_logps)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)
