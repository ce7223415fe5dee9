"""What every algorithm of the Gymnasium tier shares: the config base, environments, greedy evaluation, the run log
(``log_history.jsonl``, ``returns.png``, ``evaluation.json``) and GIF recording.

gymnasium, matplotlib and pillow are the ``gym`` extra; they are imported on first use, so that importing this module
(and the CLI) works without them and a missing one is reported by name with the command that installs it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from posttrain.errors import ConfigError, require
from posttrain.io import atomic_write_text

Policy = Callable[[np.ndarray], int]  # observation -> action (greedy at evaluation)


@dataclass
class GymConfig:
    """Fields every algorithm has; each algorithm's config adds its own below these."""

    env_id: str = "CartPole-v1"
    seed: int = 0
    episodes: int = 500  # training budget in episodes (each algorithm sets its own default)
    target_return: float | None = 475.0  # stop once the last 100 training episodes average this (CartPole "solved")
    eval_episodes: int = 20
    render: str | None = None  # FILE.gif: record one greedy episode after training
    output_dir: str | None = None  # default runs/gym/<algorithm>
    log_every: int = 20  # episodes between progress lines (per update for ppo and grpo)
    threads: int = 1  # torch intra-op threads: these networks are tiny and only lose time to threading
    verbose: bool = True


def gymnasium():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # rgb_array rendering draws off-screen: never open a window
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    return require("gymnasium", "gym", "posttrain gym")


def make_env(config: GymConfig, render_mode: str | None = None):
    return gymnasium().make(config.env_id, render_mode=render_mode)


def setup(config: GymConfig, algorithm: str) -> tuple[np.random.Generator, RunLog]:
    """Seed torch and numpy, fix the thread count, open the run log."""
    gymnasium()  # fail before any work when the extra is missing
    require("matplotlib", "gym", "the returns plot")
    if config.render:
        if not config.render.endswith(".gif"):
            raise ConfigError(f"--render {config.render}: only .gif recordings are supported")
        require("PIL", "gym", "--render")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    return np.random.default_rng(config.seed), RunLog(config, algorithm)


def mlp(inputs: int, outputs: int, hidden: int = 64, activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Two hidden layers: enough for CartPole's 4 numbers."""
    return nn.Sequential(nn.Linear(inputs, hidden), activation(), nn.Linear(hidden, hidden), activation(),
                         nn.Linear(hidden, outputs))


def greedy(network: nn.Module) -> Policy:
    """The argmax action of a network mapping observations to logits or Q-values."""
    def act(observation: np.ndarray) -> int:
        with torch.no_grad():
            return int(network(torch.as_tensor(observation, dtype=torch.float32)).argmax())
    return act


def evaluation_seed(config: GymConfig, episode: int, check: bool = False) -> int:
    """Seeds for the final evaluation, and disjoint ones for checks during training (which must not peek at it)."""
    return (2_000_000 if check else 1_000_000) + 1_000 * config.seed + episode


def evaluate(config: GymConfig, act: Policy, episodes: int | None = None, check: bool = False) -> list[float]:
    """Returns of ``episodes`` (default ``config.eval_episodes``) episodes played with ``act`` (greedy: no
    exploration)."""
    env = make_env(config)
    returns = []
    for episode in range(config.eval_episodes if episodes is None else episodes):
        observation, _ = env.reset(seed=evaluation_seed(config, episode, check))
        total, done = 0.0, False
        while not done:
            observation, reward, terminated, truncated, _ = env.step(act(observation))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def record_gif(config: GymConfig, act: Policy, path: str, frame_skip: int = 2, scale: float = 0.5) -> Path:
    """Play one greedy episode with ``rgb_array`` frames and save it as an animated GIF (no display needed)."""
    image = require("PIL.Image", "gym", "--render")
    env = make_env(config, render_mode="rgb_array")
    observation, _ = env.reset(seed=evaluation_seed(config, 0))
    frames, done, step = [], False, 0
    while True:
        if step % frame_skip == 0 or done:
            frame = image.fromarray(env.render())
            frame = frame.resize((int(frame.width * scale), int(frame.height * scale)))
            frames.append(frame.convert("P", palette=image.Palette.ADAPTIVE, colors=32))
        if done:
            break
        observation, _, terminated, truncated, _ = env.step(act(observation))
        done, step = terminated or truncated, step + 1
    fps = env.metadata.get("render_fps", 50)
    env.close()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=int(1000 * frame_skip / fps), loop=0)
    return out


class RunLog:
    """Episode returns, one JSON line per logged point, a progress line on stdout, and the files a run leaves."""

    def __init__(self, config: GymConfig, algorithm: str):
        self.config, self.algorithm = config, algorithm
        self.dir = Path(config.output_dir or Path("runs") / "gym" / algorithm)
        self.dir.mkdir(parents=True, exist_ok=True)
        resolved = {"algorithm": algorithm, **asdict(config)}
        atomic_write_text(self.dir / "config.json", json.dumps(resolved, indent=2) + "\n")
        self.file = open(self.dir / "log_history.jsonl", "w")
        self.returns: list[float] = []
        self.env_steps = 0
        self.start = time.perf_counter()

    def episode(self, total_return: float, length: int) -> None:
        self.returns.append(float(total_return))
        self.env_steps += length

    def mean_return(self, last: int = 100) -> float:
        return float(np.mean(self.returns[-last:])) if self.returns else 0.0

    def solved(self) -> bool:
        target = self.config.target_return
        return target is not None and len(self.returns) >= 100 and self.mean_return() >= target

    def log(self, **metrics: float) -> None:
        record = {"episode": len(self.returns), "env_steps": self.env_steps,
                  "mean_return_100": round(self.mean_return(), 2),
                  **{k: round(float(v), 5) for k, v in metrics.items()},
                  "time_s": round(time.perf_counter() - self.start, 2)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.config.verbose:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(f"[{self.algorithm}] episode {record['episode']:5d}  steps {self.env_steps:7d}  "
                  f"mean_return_100 {record['mean_return_100']:6.1f}  {shown}  ({record['time_s']:.0f} s)", flush=True)

    def finish(self, act: Policy) -> dict:
        """Evaluate greedily, write evaluation.json and returns.png (and the GIF), return the run's metrics."""
        train_time = time.perf_counter() - self.start
        eval_returns = evaluate(self.config, act)
        metrics = {
            "algorithm": self.algorithm, "env_id": self.config.env_id, "seed": self.config.seed,
            "episodes": len(self.returns), "env_steps": self.env_steps, "train_time_s": round(train_time, 2),
            "mean_return_100": round(self.mean_return(), 2),
            "eval_mean_return": float(np.mean(eval_returns)), "eval_std_return": float(np.std(eval_returns)),
            "eval_returns": eval_returns, "train_returns": self.returns, "output_dir": str(self.dir),
        }
        self.file.write(json.dumps({"eval_mean_return": metrics["eval_mean_return"],
                                    "eval_std_return": metrics["eval_std_return"],
                                    "eval_episodes": len(eval_returns)}) + "\n")
        self.file.close()
        plot_returns(self.returns, metrics["eval_mean_return"], self.dir / "returns.png",
                     f"{self.algorithm} on {self.config.env_id} (seed {self.config.seed})")
        if self.config.render:
            metrics["render"] = str(record_gif(self.config, act, self.config.render))
        metrics["wall_time_s"] = round(time.perf_counter() - self.start, 2)
        summary = {k: v for k, v in metrics.items() if k not in ("train_returns", "eval_returns")}
        evaluation = json.dumps({**summary, "eval_returns": eval_returns}, indent=2)
        atomic_write_text(self.dir / "evaluation.json", evaluation + "\n")
        if self.config.verbose:
            print(f"[{self.algorithm}] evaluation over {len(eval_returns)} episodes: "
                  f"{metrics['eval_mean_return']:.1f} +- {metrics['eval_std_return']:.1f}  "
                  f"(trained {len(self.returns)} episodes, {self.env_steps} steps, {train_time:.1f} s) -> {self.dir}",
                  flush=True)
        return metrics


def plot_returns(returns: list[float], eval_mean: float, path: Path, title: str) -> None:
    """Episode returns, their 100-episode moving average and the final greedy evaluation, as a PNG (Agg, headless)."""
    require("matplotlib", "gym", "the returns plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)  # a figure without pyplot: no global backend, no display
    axes = figure.add_subplot()
    episodes = np.arange(1, len(returns) + 1)
    axes.plot(episodes, returns, lw=0.6, alpha=0.4, label="episode return")
    if returns:
        window = np.array([np.mean(returns[max(0, i - 99): i + 1]) for i in range(len(returns))])
        axes.plot(episodes, window, lw=1.8, label="mean of last 100")
    axes.axhline(eval_mean, color="k", ls="--", lw=1, label=f"evaluation {eval_mean:.0f}")
    axes.set(xlabel="training episode", ylabel="return", title=title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
