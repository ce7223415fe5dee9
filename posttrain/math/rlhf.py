"""PPO-RLHF quantities on completion tokens: per-token rewards from a sequence score, the KL penalty, adaptive KL
control, and the value function's explained variance.

Token grid: a rollout batch is ``(B, T)`` over the shifted sequence (position t scores the token at t + 1, as
``posttrain.models.forward.token_logps`` returns it); ``completion_mask`` ``(B, T)`` marks the completion tokens,
contiguous in each row (prompt positions before them, padding after). GAE over this grid is
``posttrain.math.advantages.token_gae``; the clipped losses are in ``posttrain.math.policy``.
"""

from __future__ import annotations

import torch

from posttrain.math.logprobs import masked_sum
from posttrain.math.policy import kl_estimate

REWARD_MODES = ("sparse", "dense")


def last_token_mask(completion_mask: torch.Tensor) -> torch.Tensor:
    """1 at each row's last completion token, ``(B, T)``; a row without completion tokens has none."""
    mask = completion_mask.bool()
    following = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    return mask & ~following


def token_level_scores(scores: torch.Tensor, completion_mask: torch.Tensor, mode: str = "sparse") -> torch.Tensor:
    """Spread one score per sequence ``(B,)`` over its completion tokens ``(B, T)``.

        sparse:  r_t = s at the last completion token, 0 elsewhere         (Ziegler et al. 2019; Ouyang et al. 2022)
        dense:   r_t = s / |y| at every completion token                    (uniform credit)

    Both sum to s over the completion, so the undiscounted return of the first token is the same; ``dense`` gives the
    value function an easier, smoother target at the price of telling early tokens nothing about which one mattered.
    """
    mask = completion_mask.to(scores.dtype)
    if mode == "sparse":
        return last_token_mask(completion_mask).to(scores.dtype) * scores.unsqueeze(-1)
    if mode == "dense":
        return mask * (scores / mask.sum(-1).clamp(min=1)).unsqueeze(-1)
    raise ValueError(f"reward_mode={mode!r}: expected one of {', '.join(REWARD_MODES)}")


def kl_penalized_rewards(token_scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor,
                         completion_mask: torch.Tensor, beta: float, estimator: str = "k1"
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO-RLHF per-token reward (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593; Ouyang et al. 2022):

        r_t = score_t - beta * kl_t,      kl_t = k1 / k2 / k3 estimate of KL(pi || pi_ref) at token t

    Returns ``(rewards, kl)``, both ``(B, T)`` and zero outside the completion. With the k1 estimator the penalty
    summed over a sequence is beta * log pi(y|x) / pi_ref(y|x), the KL of the sequence in expectation.
    """
    mask = completion_mask.to(logps.dtype)
    kl = kl_estimate(logps, ref_logps, estimator) * mask
    return (token_scores - beta * kl) * mask, kl


def adaptive_kl_coef(beta: float, measured_kl: float, target_kl: float, horizon: float, n_steps: int) -> float:
    """Adaptive KL control (Ziegler et al. 2019, section 2.2), a proportional controller on the sequence KL:

        e      = clip(KL / target - 1, -0.2, 0.2)
        beta  <- beta * (1 + e * n_steps / horizon)

    ``n_steps``: samples in the rollout that measured KL; ``horizon``: samples over which beta may change by e^(+-0.2).
    """
    error = min(max(measured_kl / target_kl - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over masked entries: 1 is a perfect value function, 0 predicts no better than the
    mean return, negative is worse than that. NaN when the returns do not vary."""
    count = mask.to(returns.dtype).sum().clamp(min=1)

    def variance(x: torch.Tensor) -> torch.Tensor:
        mean = masked_sum(x, mask) / count
        return masked_sum((x - mean) ** 2, mask) / count

    var_returns = variance(returns)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - variance(returns - values) / var_returns)
