"""RL foundations on Gymnasium: CartPole from random play to PPO and GRPO (``posttrain gym <algorithm>``).

The learning path, one file per step, each docstring saying why the next step is needed:
random_play -> q_learning -> dqn -> reinforce -> ppo -> grpo. The policy-gradient steps use the same advantage and
loss functions in ``posttrain.math`` as the LLM trainers. Every algorithm is ``train(config) -> metrics``:

    from posttrain.gym import make_config, train
    metrics = train(make_config("ppo", seed=1, output_dir="runs/gym/ppo-1"))

Needs the ``gym`` extra (``pip install 'posttrain[gym]'``); importing this package does not (it stays light).
"""

from __future__ import annotations

import dataclasses
import importlib

# algorithm name -> (module, config class): modules load on first use
ALGORITHMS = {
    "random": ("random_play", "RandomConfig"),
    "q-learning": ("q_learning", "QLearningConfig"),
    "dqn": ("dqn", "DQNConfig"),
    "reinforce": ("reinforce", "ReinforceConfig"),
    "ppo": ("ppo", "PPOConfig"),
    "grpo": ("grpo", "GRPOConfig"),
}


def _module(algorithm: str):
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    return importlib.import_module(f"posttrain.gym.{ALGORITHMS[algorithm][0]}")


def make_config(algorithm: str, quick: bool = False, **overrides):
    """The algorithm's config: its defaults, then its small-budget ``QUICK`` preset if asked, then ``overrides``
    (``None`` values are ignored, so CLI options left unset keep the defaults)."""
    module = _module(algorithm)
    config = getattr(module, ALGORITHMS[algorithm][1])()
    if quick:
        config = dataclasses.replace(config, **module.QUICK)
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def train(config) -> dict:
    """Train with any algorithm's config (the algorithm is the config's type) and return the run's metrics."""
    module = type(config).__module__
    if module not in {f"posttrain.gym.{name}" for name, _ in ALGORITHMS.values()}:
        raise TypeError(f"not a gym algorithm's config: {type(config).__name__}")
    return importlib.import_module(module).train(config)


def run(algorithm: str, quick: bool = False, **overrides) -> dict:
    """What ``posttrain gym <algorithm> [options]`` does."""
    return train(make_config(algorithm, quick=quick, **overrides))
