"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300), on CartPole.

No critic. Each update picks a few start seeds s and plays a *group* of G episodes from each (``env.reset(seed=s)`` G
times: the same start state, different sampled actions), the way the LLM version samples G completions of one prompt.
Each episode i gets one scalar reward, its return R_i, and one advantage relative to its group:

    A_i   = (R_i - mean(R_group)) / (std(R_group) + eps)                  (``posttrain.math.group_advantages``)
    rho_t = pi_theta(a_t | s_t) / pi_old(a_t | s_t)
    L     = - 1/S * sum over all steps t of all episodes of min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i)

A_i is shared by every step of episode i (outcome supervision), and the clipped surrogate is PPO's
``clipped_policy_loss``. The group mean is the baseline a critic would have estimated, measured instead by sampling;
a group whose episodes all score the same (all 500) carries no signal. The loss is averaged over all S steps of the
batch (a constant, as Dr. GRPO and DAPO recommend) rather than per episode first, which would weight each step of a
short failing episode more than a step of a long one. There is no KL penalty to a reference policy here (beta = 0).

The price of dropping the critic is samples: every update plays G whole episodes per start, and credit is assigned
to episodes, not to steps. That is the trade the LLM world takes, because there the critic would be a second model
as large as the policy, while groups of completions for one prompt are cheap to sample together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from posttrain.gym.common import GymConfig, greedy, make_env, mlp, setup
from posttrain.math import clipped_policy_loss, entropy_from_logits, group_advantages


@dataclass
class GRPOConfig(GymConfig):
    episodes: int = 5000
    log_every: int = 2  # updates between progress lines
    groups_per_update: int = 4  # start seeds per update
    group_size: int = 8  # G episodes per start seed
    epochs: int = 4
    minibatch_size: int = 1024  # steps
    hidden: int = 64
    learning_rate: float = 3e-3
    epsilon: float = 0.2
    advantage_scale: str = "group"  # group, batch or none (see group_advantages)


QUICK = {"episodes": 256, "log_every": 2}


def play_groups(envs, policy, starts: list[int], group_size: int) -> list[dict[str, torch.Tensor]]:
    """G episodes from each start seed, all played in lockstep (one forward per step for every running episode).
    Returns per episode: observations (T, 4), actions (T,), logps (T,) and the return."""
    observations = np.stack([env.reset(seed=starts[i // group_size])[0] for i, env in enumerate(envs)])
    episodes = [{"observations": [], "actions": [], "logps": [], "return": 0.0} for _ in envs]
    running = list(range(len(envs)))
    while running:
        with torch.no_grad():
            distribution = torch.distributions.Categorical(logits=policy(torch.as_tensor(observations[running])))
            actions = distribution.sample()
            logps = distribution.log_prob(actions)
        still_running = []
        for k, i in enumerate(running):
            episode = episodes[i]
            episode["observations"].append(observations[i].copy())
            episode["actions"].append(int(actions[k]))
            episode["logps"].append(float(logps[k]))
            observations[i], reward, terminated, truncated, _ = envs[i].step(int(actions[k]))
            episode["return"] += float(reward)
            if not (terminated or truncated):
                still_running.append(i)
        running = still_running
    return [{"observations": torch.as_tensor(np.array(e["observations"])), "actions": torch.tensor(e["actions"]),
             "logps": torch.tensor(e["logps"]), "return": e["return"]} for e in episodes]


def train(config: GRPOConfig) -> dict:
    rng, run = setup(config, "grpo")
    envs = [make_env(config) for _ in range(config.groups_per_update * config.group_size)]
    policy = mlp(envs[0].observation_space.shape[0], envs[0].action_space.n, config.hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    update = 0
    while len(run.returns) < config.episodes and not run.solved():
        starts = [int(s) for s in rng.integers(0, 2**31 - 1, size=config.groups_per_update)]
        episodes = play_groups(envs, policy, starts, config.group_size)
        returns = torch.tensor([e["return"] for e in episodes])
        for episode in episodes:
            run.episode(episode["return"], len(episode["actions"]))
        advantages = group_advantages(returns, config.group_size, scale=config.advantage_scale)  # (groups * G,)
        lengths = torch.tensor([len(e["actions"]) for e in episodes])
        batch = {"observations": torch.cat([e["observations"] for e in episodes]),
                 "actions": torch.cat([e["actions"] for e in episodes]),
                 "old_logps": torch.cat([e["logps"] for e in episodes]),
                 "advantages": advantages.repeat_interleave(lengths)}  # every step carries its episode's A_i
        stats = optimise(policy, optimizer, batch, config)
        update += 1
        if update % config.log_every == 0:
            run.log(**stats, group_return_std=float(returns.view(-1, config.group_size).std(1, unbiased=False).mean()))
    for env in envs:
        env.close()
    return run.finish(greedy(policy))


def optimise(policy, optimizer, batch: dict[str, torch.Tensor], config: GRPOConfig) -> dict:
    """``epochs`` passes of shuffled step minibatches; each minibatch's loss is its mean over steps."""
    size = batch["actions"].shape[0]
    totals, updates = {"policy_loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0}, 0
    for _ in range(config.epochs):
        for index in torch.randperm(size).split(config.minibatch_size):
            logits = policy(batch["observations"][index])
            logps = torch.log_softmax(logits, -1).gather(1, batch["actions"][index, None]).squeeze(1)
            clipped = clipped_policy_loss(logps, batch["old_logps"][index], batch["advantages"][index],
                                          config.epsilon)
            loss = clipped.loss.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            totals["policy_loss"] += float(loss.detach())
            totals["entropy"] += float(entropy_from_logits(logits.detach()).mean())
            totals["clip_fraction"] += float(clipped.clipped.float().mean())
    return {name: total / updates for name, total in totals.items()}
