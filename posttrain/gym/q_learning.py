"""Tabular Q-learning (Watkins 1989; Watkins & Dayan 1992, https://doi.org/10.1007/BF00992698).

Q(s, a) estimates the discounted return of taking action a in state s and acting greedily afterwards. After each
step (s, a, r, s') it moves towards the one-step TD target:

    y         = r + gamma * (1 - terminated) * max_a' Q(s', a')
    Q(s, a)  <- Q(s, a) + alpha * (y - Q(s, a))

A *terminated* step (the pole fell) has no future, so nothing is bootstrapped; a *truncated* step (the 500-step time
limit) does bootstrap from s', because the time limit is not part of the task and the state after it still has value.
Actions are epsilon-greedy: random with probability epsilon (decayed linearly), else argmax_a Q(s, a).

A table needs discrete states, so each of CartPole's four continuous numbers is cut into bins between bounds (values
outside the bounds fall in the end bins). The bins are hand-made and the table cannot generalise between them: two
nearby states in different bins share nothing, and finer bins need many more episodes to fill. Next, ``dqn``: replace
the table by a neural network over the raw observation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posttrain.gym.common import GymConfig, make_env, setup


@dataclass
class QLearningConfig(GymConfig):
    episodes: int = 2000
    target_return: float | None = None  # train the whole budget
    log_every: int = 100
    # bins and bounds for (cart position, cart velocity, pole angle, pole angular velocity)
    bins: tuple[int, ...] = (3, 3, 6, 12)
    low: tuple[float, ...] = (-2.4, -3.0, -0.21, -3.0)
    high: tuple[float, ...] = (2.4, 3.0, 0.21, 3.0)
    learning_rate: float = 0.1  # alpha
    gamma: float = 0.99
    epsilon_start: float = 1.0
    epsilon_end: float = 0.02
    epsilon_decay_fraction: float = 0.6  # of the episodes, linearly


QUICK = {"episodes": 400, "log_every": 100}


class Discretiser:
    """Maps a continuous observation to a tuple of bin indices, one per dimension."""

    def __init__(self, bins, low, high):
        if not len(bins) == len(low) == len(high):
            raise ValueError(f"bins {bins}, low {low} and high {high} must have one entry per observation dimension")
        # bins - 1 inner edges per dimension: np.digitize then gives 0 .. bins-1, out-of-bounds values in the end bins
        self.edges = [np.linspace(lo, hi, n + 1)[1:-1] for n, lo, hi in zip(bins, low, high)]
        self.shape = tuple(bins)

    def __call__(self, observation) -> tuple[int, ...]:
        return tuple(int(np.digitize(value, edges)) for value, edges in zip(observation, self.edges))


def td_target(reward, next_value, terminated, gamma: float):
    """y = r + gamma * (1 - terminated) * V(s'): no bootstrap after termination, bootstrap through truncation.

    Works on floats, numpy arrays and tensors (``terminated`` as 0/1 numbers); ``dqn`` uses it on batches.
    """
    return reward + gamma * (1.0 - terminated) * next_value


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    return end + (start - end) * max(0.0, 1.0 - t / max(duration, 1e-9))


def train(config: QLearningConfig) -> dict:
    rng, run = setup(config, "q-learning")
    env = make_env(config)
    discretise = Discretiser(config.bins, config.low, config.high)
    q_table = np.zeros(discretise.shape + (env.action_space.n,))
    errors = []
    for episode in range(config.episodes):
        epsilon = linear_schedule(config.epsilon_start, config.epsilon_end,
                                  config.epsilon_decay_fraction * config.episodes, episode)
        observation, _ = env.reset(seed=config.seed if episode == 0 else None)
        state, total, steps, done = discretise(observation), 0.0, 0, False
        while not done:
            action = int(rng.integers(env.action_space.n)) if rng.random() < epsilon else int(q_table[state].argmax())
            observation, reward, terminated, truncated, _ = env.step(action)
            next_state = discretise(observation)
            target = td_target(float(reward), q_table[next_state].max(), float(terminated), config.gamma)
            error = target - q_table[state + (action,)]
            q_table[state + (action,)] += config.learning_rate * error
            errors.append(abs(error))
            state, total, steps, done = next_state, total + float(reward), steps + 1, terminated or truncated
        run.episode(total, steps)
        if (episode + 1) % config.log_every == 0:
            run.log(epsilon=epsilon, td_error=float(np.mean(errors)), states_visited=int((q_table != 0).any(-1).sum()))
            errors.clear()
        if run.solved():
            break
    env.close()
    return run.finish(lambda observation: int(q_table[discretise(observation)].argmax()))
