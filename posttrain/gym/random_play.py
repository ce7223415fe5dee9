"""Random play: the baseline every method must beat, and a first look at the environment.

CartPole-v1 (Barto, Sutton & Anderson 1983): a pole is hinged on a cart; the agent pushes the cart left (0) or right
(1). The observation is four numbers (cart position x, cart velocity, pole angle theta, pole angular velocity). Every
step earns reward +1. The episode *terminates* when |theta| > 12 degrees or |x| > 2.4 (a real end: there is no
future reward), and is *truncated* at 500 steps by a time limit (not an end of the task: the state after it still has
value). That distinction returns in every TD target and in GAE.

A uniformly random policy keeps the pole up for about 22 steps. Next, ``q_learning``: learn from reward which action
is better in which state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posttrain.gym.common import GymConfig, make_env, setup


@dataclass
class RandomConfig(GymConfig):
    episodes: int = 1
    target_return: float | None = None
    log_every: int = 1


QUICK = {"episodes": 5}


def train(config: RandomConfig) -> dict:
    """Play ``config.episodes`` episodes with uniformly random actions (nothing is learned)."""
    rng, run = setup(config, "random")
    env = make_env(config)
    if config.verbose:
        print(f"[random] {config.env_id}\n  observation space: {env.observation_space}\n"
              f"  action space: {env.action_space}\n  reward threshold: {env.spec.reward_threshold}, "
              f"time limit: {env.spec.max_episode_steps} steps")
    env.action_space.seed(config.seed)
    for episode in range(config.episodes):
        observation, _ = env.reset(seed=config.seed if episode == 0 else None)
        total, steps, terminated, truncated = 0.0, 0, False, False
        while not (terminated or truncated):
            observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, steps = total + float(reward), steps + 1
        run.episode(total, steps)
        if (episode + 1) % config.log_every == 0:
            run.log(steps=steps, episode_return=total, terminated=terminated)
        if config.verbose and config.episodes == 1:
            end = "terminated (pole fell or cart left the track)" if terminated else "truncated at the time limit"
            print(f"  episode: {steps} steps, total reward {total:.0f}, {end}; last observation {np.round(observation, 3)}")
    actions = env.action_space.n
    env.close()
    return run.finish(lambda observation: int(rng.integers(actions)))
