"""Returns and advantages, shared by the LLM trainers and the Gymnasium tier.

Time runs along the last dimension ``T``; any leading dimensions (a batch of sequences, parallel environments) are
independent. Episode boundaries are given per step:

- ``terminated[t]``: the episode ended at t for real (no value after it: V(s_{t+1}) = 0);
- ``episode_end[t]``: the episode ended at t for any reason (termination *or* time-limit truncation), so credit must
  not flow from step t+1 back into step t. After a truncation the value of the next state is still bootstrapped.
"""

from __future__ import annotations

import torch


def discounted_returns(rewards: torch.Tensor, episode_end: torch.Tensor, gamma: float,
                       bootstrap: torch.Tensor | None = None) -> torch.Tensor:
    """Monte-Carlo returns G_t = r_t + gamma * G_{t+1}, restarting after every episode end (REINFORCE, Williams 1992).

    ``bootstrap`` ``(...)``: a value estimate for the state after the last step when the rollout was cut mid-episode.
    Shapes: rewards, episode_end ``(..., T)`` -> returns ``(..., T)``.
    """
    returns = torch.zeros_like(rewards)
    running = bootstrap if bootstrap is not None else torch.zeros_like(rewards[..., 0])
    continues = 1.0 - episode_end.to(rewards.dtype)
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + gamma * continues[..., t] * running
        returns[..., t] = running
    return returns


def generalized_advantage_estimation(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    episode_end: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438):

        delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lambda * (1 - episode_end_t) * A_{t+1}
        R_t     = A_t + V(s_t)                     (the value target)

    ``next_values[t]`` is V(s_{t+1}); for the last step of a truncated episode it is the value of the observation the
    time limit cut off. Shapes: all ``(..., T)`` -> advantages, returns ``(..., T)``. No gradient flows.
    """
    rewards, values, next_values = rewards.detach(), values.detach(), next_values.detach()
    not_terminated = 1.0 - terminated.to(rewards.dtype)
    continues = 1.0 - episode_end.to(rewards.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = deltas[..., t] + gamma * gae_lambda * continues[..., t] * running
        advantages[..., t] = running
    return advantages, advantages + values


def token_gae(rewards: torch.Tensor, values: torch.Tensor, completion_mask: torch.Tensor, gamma: float = 1.0,
              gae_lambda: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over right-padded completions ``(B, T)``: each completion is one episode that terminates at its last
    token (V after it is 0); padding gets zero advantage. The PPO-RLHF form (Ouyang et al. 2022)."""
    mask = completion_mask.to(rewards.dtype)
    last = mask * (1.0 - torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1))
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * (1.0 - last)
    advantages, returns = generalized_advantage_estimation(
        rewards * mask, values * mask, next_values * mask, last, last, gamma, gae_lambda
    )
    return advantages * mask, returns * mask


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024, https://arxiv.org/abs/2402.03300): each reward relative to its group,

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        (population std)

    ``rewards`` ``(N,)`` holds consecutive groups of ``group_size`` completions of the same prompt (or episodes from
    the same start). ``scale``: ``group`` (divide by the group's std), ``batch`` (by the whole batch's std, as Dr. GRPO
    and others recommend against per-group scaling), ``none`` (mean-centering only, Liu et al. 2025).
    A group whose rewards are all equal gets zero advantages.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"expected (N,) rewards with N a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    groups = rewards.view(-1, group_size)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale == "group":
        centered = centered / (groups.std(dim=1, unbiased=False, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (rewards.std(unbiased=False) + eps)
    elif scale != "none":
        raise ValueError(f"scale={scale!r}: expected group, batch or none")
    return centered.reshape(-1)


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740): each sample's baseline is the
    mean reward of the *other* samples of its prompt,

        A_i = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) (r_i - mean(r_group))

    an unbiased REINFORCE baseline (it does not depend on sample i). ``rewards`` ``(N,)``: consecutive groups."""
    if group_size < 2:
        raise ValueError("leave-one-out needs at least 2 samples per prompt (group_size >= 2)")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"expected (N,) rewards with N a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    groups = rewards.view(-1, group_size)
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).reshape(-1)


def moving_average(previous: float | None, value: float, decay: float) -> float:
    """Exponential moving average b <- decay * b + (1 - decay) * value (the first value initialises it): the
    REINFORCE baseline of Williams (1992), tracking the mean reward."""
    return value if previous is None else decay * previous + (1.0 - decay) * value


def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) / std over the masked entries (population std). ``shift_mean=False`` adds the mean back, so only the
    spread changes (as TRL does for PPO rewards)."""
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    mask = mask.to(values.dtype)
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    variance = (((values - mean) * mask) ** 2).sum() / count
    out = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        out = out + mean
    return out * mask
