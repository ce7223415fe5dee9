"""The Gymnasium tier: its building blocks on hand-made values, and every algorithm learning in its quick mode."""

import json

import numpy as np
import pytest
import torch

gymnasium = pytest.importorskip("gymnasium")

from posttrain.gym import dqn, grpo, make_config, ppo, q_learning, train  # noqa: E402
from posttrain.gym.common import mlp  # noqa: E402
from posttrain.math import generalized_advantage_estimation, group_advantages  # noqa: E402


def short_cartpole(config=None):
    """CartPole cut by a 5-step time limit: every episode is truncated, none can terminate that early."""
    return gymnasium.make("CartPole-v1", max_episode_steps=5)


# --- q-learning: bins and the TD target ---------------------------------------------------------------------------

def test_discretiser_bins_inner_values_and_clips_outside_bounds():
    discretise = q_learning.Discretiser(bins=(3, 1, 4), low=(-1.0, 0.0, 0.0), high=(1.0, 1.0, 4.0))
    assert discretise.shape == (3, 1, 4)
    np.testing.assert_allclose(discretise.edges[0], [-1 / 3, 1 / 3])
    assert discretise((-5.0, 0.5, 0.5)) == (0, 0, 0)  # below the bounds: first bin
    assert discretise((-0.5, -9.0, 1.5)) == (0, 0, 1)  # a single bin takes everything
    assert discretise((0.0, 9.0, 2.5)) == (1, 0, 2)
    assert discretise((0.9, 0.0, 3.99)) == (2, 0, 3)
    assert discretise((7.0, 0.0, 40.0)) == (2, 0, 3)  # above the bounds: last bin
    with pytest.raises(ValueError, match="one entry per observation dimension"):
        q_learning.Discretiser(bins=(3, 3), low=(0.0,), high=(1.0,))


def test_td_target_stops_at_termination_and_bootstraps_through_truncation():
    assert q_learning.td_target(1.0, 10.0, terminated=1.0, gamma=0.9) == 1.0
    assert q_learning.td_target(1.0, 10.0, terminated=0.0, gamma=0.9) == pytest.approx(10.0)  # truncated or running
    batch = q_learning.td_target(torch.ones(3), torch.tensor([10.0, 10.0, 2.0]), torch.tensor([1.0, 0.0, 0.0]), 0.5)
    torch.testing.assert_close(batch, torch.tensor([1.0, 6.0, 2.0]))


def _spy_terminated(monkeypatch, module, name):
    seen = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(float(kwargs.get("terminated", args[2] if name == "td_target" else args[-1])))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_q_learning_loop_bootstraps_through_truncation(monkeypatch, tmp_path):
    seen = _spy_terminated(monkeypatch, q_learning, "td_target")
    monkeypatch.setattr(q_learning, "make_env", short_cartpole)
    train(q_learning.QLearningConfig(episodes=3, eval_episodes=1, output_dir=str(tmp_path), verbose=False))
    assert seen == [0.0] * 15  # 3 episodes cut at 5 steps: the last step of each still bootstraps

    seen.clear()
    monkeypatch.setattr(q_learning, "make_env", lambda config: gymnasium.make("CartPole-v1"))
    metrics = train(q_learning.QLearningConfig(episodes=3, eval_episodes=1, output_dir=str(tmp_path), verbose=False))
    assert len(seen) == metrics["env_steps"] and seen.count(1.0) == 3  # the pole fell: no bootstrap, once each


def test_dqn_stores_termination_not_truncation(monkeypatch, tmp_path):
    seen = []
    original = dqn.ReplayBuffer.add
    monkeypatch.setattr(dqn.ReplayBuffer, "add", lambda self, *args: (seen.append(args[-1]), original(self, *args)))
    monkeypatch.setattr(dqn, "make_env", short_cartpole)
    train(dqn.DQNConfig(episodes=4, eval_episodes=1, output_dir=str(tmp_path), verbose=False))
    assert len(seen) == 20 and not any(seen)


# --- dqn: the replay buffer ---------------------------------------------------------------------------------------

def test_replay_buffer_keeps_the_newest_transitions_and_samples_them_uniformly():
    buffer = dqn.ReplayBuffer(capacity=5, observation_size=4)
    for i in range(7):
        buffer.add(np.full(4, i), i % 2, float(i), np.full(4, i + 1), terminated=i == 6)
    assert len(buffer) == 5 and buffer.position == 2
    assert sorted(buffer.rewards.tolist()) == [2, 3, 4, 5, 6]  # 0 and 1 were overwritten
    batch = buffer.sample(2000, np.random.default_rng(0))
    assert batch["observations"].shape == (2000, 4) and batch["observations"].dtype == torch.float32
    assert batch["actions"].dtype == torch.int64 and batch["next_observations"].shape == (2000, 4)
    # the fields of one row belong to one transition
    torch.testing.assert_close(batch["observations"][:, 0], batch["rewards"])
    torch.testing.assert_close(batch["next_observations"][:, 0], batch["rewards"] + 1)
    torch.testing.assert_close(batch["actions"], batch["rewards"].long() % 2)
    torch.testing.assert_close(batch["terminated"], (batch["rewards"] == 6).float())
    counts = torch.bincount(batch["rewards"].long(), minlength=7)[2:]
    assert counts.min() > 300 and counts.max() < 500  # uniform: 400 each expected


# --- ppo and grpo: the shared math as the gym code calls it -------------------------------------------------------

def test_gae_on_hand_vectors_separates_termination_from_truncation():
    # two environments (N=2) x T=3, gamma = lambda = 0.5; both episodes end at t=1, A by termination, B by truncation
    rewards, values = torch.ones(2, 3), torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    next_values = torch.tensor([[2.0, 9.0, 4.0], [2.0, 6.0, 4.0]])  # V of the observation after each step
    terminated = torch.tensor([[False, True, False], [False, False, False]])
    episode_end = torch.tensor([[False, True, False], [False, True, False]])
    advantages, returns = generalized_advantage_estimation(rewards, values, next_values, terminated, episode_end,
                                                           gamma=0.5, gae_lambda=0.5)
    # A: deltas (1, -1, 0): the terminal V=9 is ignored; A_0 = 1 + 0.25 * -1. B: deltas (1, 2, 0): 1 + 0.5 * 6 - 2.
    torch.testing.assert_close(advantages, torch.tensor([[0.75, -1.0, 0.0], [1.5, 2.0, 0.0]]))
    torch.testing.assert_close(returns, advantages + values)


def test_ppo_rollout_keeps_the_truncated_observation_for_bootstrapping():
    class Recorder:
        def __init__(self):
            self.returns = []

        def episode(self, total, length):
            self.returns.append((total, length))

    envs = [gymnasium.wrappers.RecordEpisodeStatistics(short_cartpole()) for _ in range(2)]
    observations = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    recorder = Recorder()
    rollout, _ = ppo.collect(envs, observations, mlp(4, 2), steps=12, run=recorder)
    assert rollout["rewards"].shape == (2, 12) and recorder.returns == [(5.0, 5)] * 4
    ends = torch.zeros(12, dtype=torch.bool)
    ends[[4, 9]] = True
    assert (rollout["episode_end"] == ends).all() and not rollout["terminated"].any()
    following = rollout["observations"][:, 1:]
    # inside an episode the next observation is the next step's; after the cut it is the final one, not the reset
    assert torch.equal(rollout["next_observations"][:, :-1][:, ~ends[:-1]], following[:, ~ends[:-1]])
    assert not torch.isclose(rollout["next_observations"][:, ends], following[:, ends[:-1]]).all(-1).any()


def test_group_advantages_per_start_seed_and_broadcast_to_steps():
    returns = torch.tensor([10.0, 20.0, 30.0, 40.0, 5.0, 5.0, 5.0, 5.0])  # two groups of G=4 episodes
    advantages = group_advantages(returns, group_size=4)
    std = (125.0) ** 0.5  # population std of (10, 20, 30, 40)
    torch.testing.assert_close(advantages[:4], torch.tensor([-15.0, -5.0, 5.0, 15.0]) / (std + 1e-4))
    torch.testing.assert_close(advantages[4:], torch.zeros(4))  # equal returns: no signal
    per_step = advantages[:2].repeat_interleave(torch.tensor([2, 3]))  # as grpo.train spreads A_i over episode i
    torch.testing.assert_close(per_step, advantages[[0, 0, 1, 1, 1]])


def test_grpo_groups_start_from_the_same_state():
    envs = [gymnasium.make("CartPole-v1") for _ in range(6)]
    torch.manual_seed(0)
    episodes = grpo.play_groups(envs, mlp(4, 2), starts=[11, 22, 33], group_size=2)
    firsts = [e["observations"][0] for e in episodes]
    assert torch.equal(firsts[0], firsts[1]) and torch.equal(firsts[2], firsts[3]) and torch.equal(firsts[4], firsts[5])
    assert not torch.equal(firsts[0], firsts[2])
    for e in episodes:
        assert len(e["actions"]) == len(e["logps"]) == len(e["observations"]) == e["return"]


# --- every algorithm learns in its quick mode, and leaves its files -----------------------------------------------

@pytest.mark.parametrize("algorithm", ["q-learning", "dqn", "reinforce", "ppo", "grpo"])
def test_quick_mode_improves_on_its_first_episodes(algorithm, tmp_path):
    metrics = train(make_config(algorithm, quick=True, seed=0, output_dir=str(tmp_path), verbose=False))
    first = float(np.mean(metrics["train_returns"][:20]))
    last = float(np.mean(metrics["train_returns"][-20:]))
    assert first < 40  # it starts near random play
    assert last > 2 * first, (first, last)
    if algorithm != "q-learning":  # after 400 episodes the table's greedy policy still meets barely-visited bins
        assert metrics["eval_mean_return"] > 2 * first, (first, metrics["eval_mean_return"])
    assert len(metrics["eval_returns"]) == 20
    log = [json.loads(line) for line in (tmp_path / "log_history.jsonl").read_text().splitlines()]
    assert log[0]["episode"] > 0 and {"mean_return_100", "env_steps"} <= set(log[0])
    assert log[-1]["eval_mean_return"] == metrics["eval_mean_return"]
    assert (tmp_path / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "evaluation.json").read_text())["eval_mean_return"] == metrics["eval_mean_return"]


def test_random_play_prints_the_spaces(tmp_path, capsys):
    metrics = train(make_config("random", seed=0, output_dir=str(tmp_path)))
    out = capsys.readouterr().out
    assert "observation space: Box" in out and "action space: Discrete(2)" in out and "total reward" in out
    assert metrics["episodes"] == 1 and metrics["env_steps"] == metrics["train_returns"][0]


def test_render_writes_a_gif(tmp_path):
    from PIL import Image

    gif = tmp_path / "clips" / "random.gif"
    metrics = train(make_config("random", quick=True, output_dir=str(tmp_path), render=str(gif), verbose=False))
    assert metrics["render"] == str(gif) and gif.read_bytes()[:4] == b"GIF8"
    with Image.open(gif) as image:
        assert image.n_frames > 3 and image.size == (300, 200)


def test_cli_runs_an_algorithm_with_explicit_options_over_the_quick_preset(tmp_path, capsys):
    from posttrain.cli import main

    assert main(["gym", "q-learning", "--quick", "--episodes", "30", "--seed", "3", "--output-dir", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["episodes"] == 30 and config["seed"] == 3 and config["algorithm"] == "q-learning"
    assert "[q-learning] evaluation over 20 episodes" in capsys.readouterr().out
    assert main(["gym", "random", "--render", str(tmp_path / "x.mp4"), "--output-dir", str(tmp_path)]) == 2
    assert "only .gif" in capsys.readouterr().err
