"""Deep Q-Network (Mnih et al. 2015, https://doi.org/10.1038/nature14236).

Q-learning with a neural network Q_theta(s, .) over the raw observation instead of a table, trained by regression on
the same TD target (``q_learning.td_target``):

    y    = r + gamma * (1 - terminated) * max_a' Q_target(s', a')
    loss = Huber(Q_theta(s, a) - y)        averaged over a minibatch

Naively chasing its own moving target with correlated consecutive samples diverges; two devices make it stable:
- a *replay buffer*: transitions are stored and minibatches are sampled uniformly from it, which breaks the
  correlation between consecutive steps and reuses each transition many times;
- a *target network*: y uses a copy of theta refreshed only every ``target_update_steps`` steps, so the target does not
  move with every gradient step.
Exploration is epsilon-greedy with epsilon decayed linearly over the first ``epsilon_decay_steps`` steps. By default
a' in y is chosen by the online network and valued by the target network (Double DQN), which curbs the max's
overestimation. Even so a good greedy policy can be lost again by later updates, so training stops once a greedy check
(10 episodes, seeds the final evaluation does not use) averages ``target_return``.

Value-based methods act through argmax_a Q(s, a): they need a small discrete action set, the max over noisy estimates
overestimates values, and a good Q function is more than a good policy needs. Next, ``reinforce``: learn the policy
pi_theta(a | s) directly by gradient ascent on the expected return.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from posttrain.gym.common import GymConfig, evaluate, greedy, make_env, mlp, setup
from posttrain.gym.q_learning import linear_schedule, td_target


@dataclass
class DQNConfig(GymConfig):
    episodes: int = 1000
    hidden: int = 128
    learning_rate: float = 1e-3
    gamma: float = 0.99
    buffer_size: int = 200_000
    batch_size: int = 64
    learning_starts: int = 1_000  # random steps before the first update
    train_every: int = 4  # env steps per gradient step
    target_update_steps: int = 500
    epsilon_start: float = 1.0
    epsilon_end: float = 0.02
    epsilon_decay_steps: int = 10_000
    max_grad_norm: float = 10.0
    double: bool = True  # Double DQN: the online network picks a', the target network values it
    # every N episodes, play a few greedy episodes and stop once they average target_return (0: never)
    greedy_check_every: int = 10
    greedy_check_episodes: int = 10


QUICK = {"episodes": 80, "train_every": 2, "learning_starts": 256, "epsilon_decay_steps": 1_500, "target_update_steps": 100,
         "log_every": 25}


class ReplayBuffer:
    """A fixed-size ring of transitions (s, a, r, s', terminated); the oldest are overwritten when it is full."""

    def __init__(self, capacity: int, observation_size: int):
        self.capacity, self.size, self.position = capacity, 0, 0
        self.observations = np.zeros((capacity, observation_size), dtype=np.float32)
        self.next_observations = np.zeros((capacity, observation_size), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)  # 1 only for a real end, never for truncation

    def add(self, observation, action: int, reward: float, next_observation, terminated: bool) -> None:
        i = self.position
        self.observations[i], self.actions[i], self.rewards[i] = observation, action, reward
        self.next_observations[i], self.terminated[i] = next_observation, float(terminated)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Uniform with replacement over the stored transitions."""
        index = rng.integers(0, self.size, size=batch_size)
        return {name: torch.as_tensor(getattr(self, name)[index])
                for name in ("observations", "actions", "rewards", "next_observations", "terminated")}


def train(config: DQNConfig) -> dict:
    rng, run = setup(config, "dqn")
    env = make_env(config)
    n_actions, observation_size = env.action_space.n, env.observation_space.shape[0]
    q_network = mlp(observation_size, n_actions, config.hidden, torch.nn.ReLU)
    target_network = copy.deepcopy(q_network)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=config.learning_rate)
    buffer = ReplayBuffer(config.buffer_size, observation_size)
    act = greedy(q_network)
    losses, q_means, step = [], [], 0
    for episode in range(config.episodes):
        observation, _ = env.reset(seed=config.seed if episode == 0 else None)
        total, length, done = 0.0, 0, False
        while not done:
            epsilon = linear_schedule(config.epsilon_start, config.epsilon_end, config.epsilon_decay_steps, step)
            explore = step < config.learning_starts or rng.random() < epsilon
            action = int(rng.integers(n_actions)) if explore else act(observation)
            next_observation, reward, terminated, truncated, _ = env.step(action)
            buffer.add(observation, action, float(reward), next_observation, terminated)
            observation, total, length, step = next_observation, total + float(reward), length + 1, step + 1
            done = terminated or truncated
            if step >= config.learning_starts and step % config.train_every == 0:
                loss, q_mean = update(q_network, target_network, optimizer, buffer.sample(config.batch_size, rng), config)
                losses.append(loss)
                q_means.append(q_mean)
            if step % config.target_update_steps == 0:
                target_network.load_state_dict(q_network.state_dict())
        run.episode(total, length)
        if (episode + 1) % config.log_every == 0:
            run.log(epsilon=epsilon, loss=np.mean(losses) if losses else 0.0, q_mean=np.mean(q_means) if q_means else 0.0)
            losses.clear()
            q_means.clear()
        if run.solved() or greedy_check_passed(config, act, episode + 1):
            break
    env.close()
    return run.finish(act)


def greedy_check_passed(config: DQNConfig, act, episodes_done: int) -> bool:
    """Training returns are epsilon-greedy and understate the greedy policy, and DQN's greedy policy does not stay
    good by itself (late updates can undo it: Q-learning with function approximation has no convergence guarantee).
    So, as Stable-Baselines3's evaluation callback does, stop on a greedy check, with seeds the final evaluation
    does not use."""
    if not config.greedy_check_every or config.target_return is None or episodes_done % config.greedy_check_every:
        return False
    return float(np.mean(evaluate(config, act, config.greedy_check_episodes, check=True))) >= config.target_return


def update(q_network, target_network, optimizer, batch: dict[str, torch.Tensor], config: DQNConfig) -> tuple[float, float]:
    """One gradient step on the Huber TD error of a replay minibatch (B transitions)."""
    with torch.no_grad():
        next_q = target_network(batch["next_observations"])  # (B, actions)
        if config.double:  # van Hasselt et al. 2016, https://arxiv.org/abs/1509.06461: less overestimation
            next_values = next_q.gather(1, q_network(batch["next_observations"]).argmax(1, keepdim=True)).squeeze(1)
        else:
            next_values = next_q.max(dim=1).values  # (B,)
        targets = td_target(batch["rewards"], next_values, batch["terminated"], config.gamma)
    q_values = q_network(batch["observations"]).gather(1, batch["actions"][:, None]).squeeze(1)  # Q(s, a): (B,)
    loss = F.smooth_l1_loss(q_values, targets)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(q_network.parameters(), config.max_grad_norm)
    optimizer.step()
    return float(loss.detach()), float(q_values.detach().mean())
