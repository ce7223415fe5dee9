"""Mixture-of-experts router losses and statistics, on router logits ``(N, E)``: N tokens, E experts.

Used by sparse upcycling (Komatsuzaki et al. 2023, https://arxiv.org/abs/2212.05055): a dense model's MLP copied
into E experts behind a new router, then trained with the task loss plus these auxiliary terms.
"""

from __future__ import annotations

import torch


def _masked_rows(router_logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(N,)`` float weights of the rows that count (padding rows weigh 0)."""
    if mask is None:
        return torch.ones(router_logits.shape[0], device=router_logits.device)
    return mask.reshape(-1).to(device=router_logits.device, dtype=torch.float32)


def expert_utilization(router_logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """f_e: the fraction of the N * k top-k assignments that go to expert e, ``(E,)``, summing to 1.
    Uniform routing gives 1/E for every expert."""
    rows = _masked_rows(router_logits, mask)
    chosen = router_logits.topk(top_k, dim=-1).indices  # (N, k)
    counts = torch.zeros(router_logits.shape[-1], device=router_logits.device)
    counts.scatter_add_(0, chosen.reshape(-1), rows.repeat_interleave(top_k))
    return counts / (rows.sum() * top_k).clamp(min=1)


def load_balancing_loss(router_logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None,
                        fractions: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer's auxiliary loss (Fedus et al. 2022, eq. 4-6, https://arxiv.org/abs/2101.03961; GShard,
    Lepikhin et al. 2021, for top-2): L = E * sum_e f_e P_e, f_e = ``expert_utilization`` (a count: no gradient),
    P_e = mean over tokens of softmax(logits)_e (the router's gradient flows through it). It is 1 when routing is
    uniform and grows as tokens crowd onto the experts the router favours. (transformers' Mixtral
    ``load_balancing_loss_func`` counts assignments without dividing by k: its value is k times this one.)
    ``fractions``: f_e ``(E,)`` counted over a larger batch than these rows (a whole accumulated step); then L is linear
    in the rows' probabilities, so the rows of a step can be scored in parts whose values add up."""
    rows = _masked_rows(router_logits, mask)
    probs = router_logits.float().softmax(-1)  # (N, E)
    mean_probs = (probs * rows[:, None]).sum(0) / rows.sum().clamp(min=1)  # P_e
    if fractions is None:
        fractions = expert_utilization(router_logits.detach(), top_k, mask)  # f_e
    return router_logits.shape[-1] * (fractions * mean_probs).sum()


def router_z_loss(router_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE's router z-loss (Zoph et al. 2022, eq. 5, https://arxiv.org/abs/2202.08906):
    L_z = mean over tokens of (log sum_e exp x_e)^2; keeps router logits small, so the softmax stays stable."""
    rows = _masked_rows(router_logits, mask)
    z = torch.logsumexp(router_logits.float(), dim=-1) ** 2  # (N,)
    return (z * rows).sum() / rows.sum().clamp(min=1)
