"""REINFORCE with a baseline (Williams 1992, https://doi.org/10.1007/BF00992696; Sutton & Barto 2018, section 13.4).

A stochastic policy pi_theta(a | s) (a network giving action logits) is improved directly by gradient ascent on the
expected return, using the policy-gradient theorem:

    G_t          = r_t + gamma * G_{t+1}                        (Monte-Carlo return, to the episode's end)
    A_t          = G_t - b(s_t)                                 (any baseline b that does not depend on a_t)
    grad J(theta) = E[ sum_t A_t * grad log pi_theta(a_t | s_t) ]

so the loss is ``policy_gradient_loss(logps, advantages)`` = -A_t log pi(a_t | s_t), the same function the LLM
trainers use. The baseline leaves the gradient unbiased and cuts its variance. ``baseline="value"`` learns b(s) = V(s)
by regression on G_t; ``baseline="running"`` uses a running mean of the returns. Advantages are divided by their
standard deviation so the step size does not grow with the returns. The returns come from
``posttrain.math.discounted_returns``; a time-limit truncation simply ends the sum (the lost tail is at most
gamma^(500 - t) of the future, small away from the end).

The estimate is unbiased but noisy: it needs whole episodes before learning, and each batch of episodes is used for one
gradient step and thrown away, since after the step the data no longer comes from the current policy. Next, ``ppo``:
a critic that bootstraps (GAE) for lower variance, and a clipped objective that allows several epochs on each batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from posttrain.gym.common import GymConfig, greedy, make_env, mlp, setup
from posttrain.math import discounted_returns, entropy_from_logits, policy_gradient_loss


@dataclass
class ReinforceConfig(GymConfig):
    episodes: int = 1000
    episodes_per_update: int = 4
    hidden: int = 64
    learning_rate: float = 3e-3
    value_learning_rate: float = 1e-2
    gamma: float = 0.99
    baseline: str = "value"  # value (learned V(s)) or running (mean of returns)
    running_decay: float = 0.9
    entropy_coef: float = 0.0


QUICK = {"episodes": 120, "log_every": 20}


def play_episode(env, policy, seed: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode sampled from pi: observations (T, 4), actions (T,), rewards (T,)."""
    observation, _ = env.reset(seed=seed)
    observations, actions, rewards, done = [], [], [], False
    while not done:
        with torch.no_grad():
            logits = policy(torch.as_tensor(observation, dtype=torch.float32))
        action = int(torch.distributions.Categorical(logits=logits).sample())
        observations.append(observation)
        actions.append(action)
        observation, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        done = terminated or truncated
    return torch.as_tensor(np.array(observations)), torch.tensor(actions), torch.tensor(rewards)


def train(config: ReinforceConfig) -> dict:
    if config.baseline not in ("value", "running"):
        raise ValueError(f"baseline={config.baseline!r}: expected value or running")
    _, run = setup(config, "reinforce")
    env = make_env(config)
    policy = mlp(env.observation_space.shape[0], env.action_space.n, config.hidden)
    value = mlp(env.observation_space.shape[0], 1, config.hidden)
    policy_optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    value_optimizer = torch.optim.Adam(value.parameters(), lr=config.value_learning_rate)
    running_baseline, episode, update = None, 0, 0
    while episode < config.episodes and not run.solved():
        batch = [play_episode(env, policy, config.seed if episode + i == 0 else None)
                 for i in range(config.episodes_per_update)]
        episode += len(batch)
        for _, _, rewards in batch:
            run.episode(float(rewards.sum()), len(rewards))
        observations, actions, rewards = (torch.cat(parts) for parts in zip(*batch))
        episode_end = torch.zeros_like(rewards, dtype=torch.bool)
        episode_end[torch.tensor([len(r) for _, _, r in batch]).cumsum(0) - 1] = True  # last step of each episode
        returns = discounted_returns(rewards, episode_end, config.gamma)  # (T,) over the concatenated episodes

        if config.baseline == "value":
            values = value(observations).squeeze(-1)
            value_loss = 0.5 * ((values - returns) ** 2).mean()
            value_optimizer.zero_grad()
            value_loss.backward()
            value_optimizer.step()
            baseline = values.detach()
        else:
            mean = float(returns.mean())
            running_baseline = mean if running_baseline is None else (
                config.running_decay * running_baseline + (1 - config.running_decay) * mean)
            baseline, value_loss = torch.full_like(returns, running_baseline), torch.tensor(0.0)
        advantages = returns - baseline
        advantages = advantages / (advantages.std() + 1e-8)

        logits = policy(observations)
        logps = torch.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)  # log pi(a_t | s_t): (T,)
        entropy = entropy_from_logits(logits).mean()
        loss = policy_gradient_loss(logps, advantages).mean() - config.entropy_coef * entropy
        policy_optimizer.zero_grad()
        loss.backward()
        policy_optimizer.step()

        update += 1
        if update % max(1, config.log_every // config.episodes_per_update) == 0:
            run.log(policy_loss=float(loss.detach()), value_loss=float(value_loss.detach()), entropy=float(entropy.detach()))
    env.close()
    return run.finish(greedy(policy))
