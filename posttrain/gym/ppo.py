"""Proximal Policy Optimization (Schulman et al. 2017, https://arxiv.org/abs/1707.06347), actor-critic with GAE.

An actor pi_theta(a | s) and a critic V_phi(s). Each update collects T steps from N environments, then:

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - episode_end_t) * A_{t+1}        (GAE, Schulman et al. 2016)
    R_t     = A_t + V(s_t)                                                     (the critic's target)
    rho_t   = pi_theta(a_t | s_t) / pi_old(a_t | s_t)
    L       = - min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)              (policy)
            + c_v * 0.5 * max((V - R)^2, (V_clip - R)^2)                       (value, clipped around the old V)
            - c_e * entropy

for several epochs of shuffled minibatches. GAE and both losses are ``posttrain.math``'s
``generalized_advantage_estimation``, ``clipped_policy_loss`` and ``clipped_value_loss``, the same functions the LLM
PPO trainer uses (there a "step" is a token and the episode is one completion). Compared with REINFORCE, the critic
bootstraps (lower variance, no waiting for episode ends), and the clip removes the incentive to move rho outside
[1 - eps, 1 + eps], so the same batch can be reused for several gradient steps without the policy running away.
A time-limit truncation ends the episode for GAE (``episode_end``) but not its value: V of the cut-off observation is
still bootstrapped (``terminated`` is 0 there).

The critic is a second network as large as the policy; for an LLM it is a second multi-billion-parameter model, and
its value of a half-written answer is hard to learn. Next, ``grpo``: drop the critic and take the baseline from a
group of episodes started from the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from posttrain.gym.common import GymConfig, greedy, gymnasium, make_env, mlp, setup
from posttrain.math import (clipped_policy_loss, clipped_value_loss, entropy_from_logits,
                            generalized_advantage_estimation, whiten)


@dataclass
class PPOConfig(GymConfig):
    episodes: int = 2000
    log_every: int = 5  # updates between progress lines
    num_envs: int = 8
    rollout_steps: int = 128  # T per environment per update
    epochs: int = 10
    minibatch_size: int = 256
    hidden: int = 64
    learning_rate: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    epsilon: float = 0.2
    # the value loss stops rewarding moves of V beyond old V +- cliprange_value (None: plain squared error); the
    # paper's code uses 0.2 with normalised returns, CartPole's values reach 100
    cliprange_value: float | None = 10.0
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5


QUICK = {"episodes": 120, "num_envs": 4}


def collect(envs, observations: np.ndarray, actor, steps: int, run) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """T steps in each of the N environments with actions sampled from pi. Returns (N, T, ...) tensors and the
    observations to continue from. ``next_observations[:, t]`` is the state each action led to: after a termination
    or a truncation that is the final observation, before the reset."""
    n = len(envs)
    buffers = {"observations": np.zeros((n, steps) + observations.shape[1:], np.float32),
               "next_observations": np.zeros((n, steps) + observations.shape[1:], np.float32),
               "actions": np.zeros((n, steps), np.int64), "logps": np.zeros((n, steps), np.float32),
               "rewards": np.zeros((n, steps), np.float32), "terminated": np.zeros((n, steps), bool),
               "episode_end": np.zeros((n, steps), bool)}
    for t in range(steps):
        with torch.no_grad():
            distribution = torch.distributions.Categorical(logits=actor(torch.as_tensor(observations)))
            actions = distribution.sample()
            logps = distribution.log_prob(actions)
        buffers["observations"][:, t], buffers["actions"][:, t], buffers["logps"][:, t] = observations, actions, logps
        for i, env in enumerate(envs):
            observation, reward, terminated, truncated, info = env.step(int(actions[i]))
            buffers["next_observations"][i, t], buffers["rewards"][i, t] = observation, reward
            buffers["terminated"][i, t], buffers["episode_end"][i, t] = terminated, terminated or truncated
            if terminated or truncated:
                run.episode(float(info["episode"]["r"]), int(info["episode"]["l"]))
                observation, _ = env.reset()
            observations[i] = observation
    return {k: torch.as_tensor(v) for k, v in buffers.items()}, observations


def train(config: PPOConfig) -> dict:
    _, run = setup(config, "ppo")
    envs = [gymnasium().wrappers.RecordEpisodeStatistics(make_env(config)) for _ in range(config.num_envs)]
    observations = np.stack([env.reset(seed=config.seed * 1_000 + i)[0] for i, env in enumerate(envs)])
    observation_size, n_actions = observations.shape[1], envs[0].action_space.n
    actor, critic = mlp(observation_size, n_actions, config.hidden), mlp(observation_size, 1, config.hidden)
    parameters = [*actor.parameters(), *critic.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    update = 0
    while len(run.returns) < config.episodes and not run.solved():
        rollout, observations = collect(envs, observations, actor, config.rollout_steps, run)
        with torch.no_grad():
            values = critic(rollout["observations"]).squeeze(-1)  # V(s_t): (N, T)
            next_values = critic(rollout["next_observations"]).squeeze(-1)  # V(s_{t+1}), incl. truncated ends
        advantages, returns = generalized_advantage_estimation(
            rollout["rewards"], values, next_values, rollout["terminated"], rollout["episode_end"],
            config.gamma, config.gae_lambda)
        batch = {"observations": rollout["observations"].flatten(0, 1), "actions": rollout["actions"].flatten(),
                 "old_logps": rollout["logps"].flatten(), "old_values": values.flatten(),
                 "advantages": advantages.flatten(), "returns": returns.flatten()}
        stats = optimise(actor, critic, optimizer, parameters, batch, config)
        update += 1
        if update % config.log_every == 0:
            run.log(**stats)
    for env in envs:
        env.close()
    return run.finish(greedy(actor))


def optimise(actor, critic, optimizer, parameters, batch: dict[str, torch.Tensor], config: PPOConfig) -> dict:
    """Several epochs of shuffled minibatches over one rollout (N * T samples)."""
    size = batch["actions"].shape[0]
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
    updates = 0
    for _ in range(config.epochs):
        for index in torch.randperm(size).split(config.minibatch_size):
            logits = actor(batch["observations"][index])
            logps = torch.log_softmax(logits, -1).gather(1, batch["actions"][index, None]).squeeze(1)
            advantages = whiten(batch["advantages"][index])  # per minibatch, as in the reference implementation
            policy = clipped_policy_loss(logps, batch["old_logps"][index], advantages, config.epsilon)
            values = critic(batch["observations"][index]).squeeze(-1)
            value_loss, _ = clipped_value_loss(values, batch["old_values"][index], batch["returns"][index],
                                               config.cliprange_value)
            entropy = entropy_from_logits(logits).mean()
            loss = policy.loss.mean() + config.vf_coef * value_loss.mean() - config.entropy_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            updates += 1
            with torch.no_grad():
                log_ratio = logps - batch["old_logps"][index]
                for name, value in (("policy_loss", policy.loss.mean()), ("value_loss", value_loss.mean()),
                                    ("entropy", entropy), ("clip_fraction", policy.clipped.float().mean()),
                                    ("approx_kl", (log_ratio.exp() - 1 - log_ratio).mean())):
                    totals[name] += float(value)
    return {name: total / updates for name, total in totals.items()}
