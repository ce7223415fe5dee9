"""PPO-RLHF math by hand: per-token scores, the KL-penalised reward, GAE over completion tokens, the clip cases of
issue 5, adaptive KL control and explained variance."""

import math

import pytest
import torch

from posttrain.math import (
    adaptive_kl_coef,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    kl_penalized_rewards,
    token_gae,
    token_level_scores,
)
from posttrain.math.rlhf import last_token_mask

# two rows on a shifted grid of 5: row 0 has prompt positions 0-1 and completion 2-4; row 1 completion 1-2, then pad
MASK = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
SCORES = torch.tensor([3.0, -1.0])


def test_sparse_scores_sit_on_the_last_completion_token():
    assert last_token_mask(MASK).int().tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]]
    assert token_level_scores(SCORES, MASK, "sparse").tolist() == [[0, 0, 0, 0, 3.0], [0, 0, -1.0, 0, 0]]


def test_dense_scores_spread_uniformly_and_sum_to_the_sparse_score():
    dense = token_level_scores(SCORES, MASK, "dense")
    torch.testing.assert_close(dense, torch.tensor([[0, 0, 1.0, 1.0, 1.0], [0, -0.5, -0.5, 0, 0]]))
    torch.testing.assert_close(dense.sum(-1), token_level_scores(SCORES, MASK, "sparse").sum(-1))
    with pytest.raises(ValueError, match="reward_mode"):
        token_level_scores(SCORES, MASK, "both")


def test_kl_penalty_per_token_and_zero_when_policy_is_reference():
    logps = torch.full((2, 5), -1.0)
    ref_logps = torch.full((2, 5), -1.5)
    rewards, kl = kl_penalized_rewards(token_level_scores(SCORES, MASK), logps, ref_logps, MASK, 0.1, "k1")
    # k1 = logp - ref_logp = 0.5 on completion tokens; r_t = score_t - 0.1 * 0.5
    torch.testing.assert_close(kl, 0.5 * MASK.float())
    torch.testing.assert_close(rewards, torch.tensor([[0, 0, -0.05, -0.05, 2.95], [0, -0.05, -1.05, 0, 0]]))
    same, kl_same = kl_penalized_rewards(token_level_scores(SCORES, MASK), logps, logps, MASK, 0.1, "k3")
    assert kl_same.abs().max() == 0 and torch.equal(same, token_level_scores(SCORES, MASK))


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value_and_stops_at_the_end():
    rewards = torch.tensor([[0, 0, 0.0, 0.0, 3.0], [0, 0.0, -1.0, 0, 0]])
    values = torch.tensor([[7, 7, 0.5, 1.0, 2.0], [7, 0.25, 0.5, 9.0, 9.0]])  # 7, 9: prompt / pad, never used
    advantages, returns = token_gae(rewards, values, MASK, gamma=1.0, gae_lambda=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0, 0, 2.5, 2.0, 1.0], [0, -1.25, -1.5, 0, 0]]))
    torch.testing.assert_close(returns, torch.tensor([[0, 0, 3.0, 3.0, 3.0], [0, -1.0, -1.0, 0, 0]]))
    # gamma 0.5, lambda 1 on row 0: A_4 = 3 - 2 = 1; A_3 = 0 + 0.5 * 3 - 1 = 0.5 ... = discounted return - V
    advantages, _ = token_gae(rewards[:1], values[:1], MASK[:1], gamma=0.5, gae_lambda=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0, 0, 0.75 - 0.5, 1.5 - 1.0, 1.0]]))


def test_clip_cases_of_the_issue():
    """ratio 2, A = 1 -> -min(2, 1.2) = -1.2; ratio 0.5, A = -1 -> -min(-0.5, -0.8) = 0.8 (clip 0.2)."""
    out = clipped_policy_loss(torch.log(torch.tensor([2.0, 0.5])), torch.zeros(2), torch.tensor([1.0, -1.0]), 0.2)
    torch.testing.assert_close(out.loss, torch.tensor([-1.2, 0.8]))
    assert out.clipped.tolist() == [True, True]
    # value clipping: old 0, new -1, return 0.5, clip 0.2 -> max((−1.5)^2, (−0.7)^2) / 2 = 1.125, unclipped branch
    loss, clipped = clipped_value_loss(torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.5]), 0.2)
    torch.testing.assert_close(loss, torch.tensor([1.125]))
    assert not clipped.item()


def test_adaptive_kl_controller():
    """KL at twice the target: error clipped to +0.2; beta 0.1 -> 0.1 * (1 + 0.2 * 100 / 1000) = 0.102."""
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 1000, 100) == pytest.approx(0.102)
    assert adaptive_kl_coef(0.1, 3.0, 6.0, 1000, 100) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    assert adaptive_kl_coef(0.1, 6.6, 6.0, 1000, 100) == pytest.approx(0.1 * (1 + 0.1 * 0.1))


def test_explained_variance_and_approx_kl():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask) == 1.0
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # V = R + (1, -1, 0): Var[R - V] = 2/3, Var[R] = 2/3 -> 0
    assert explained_variance(returns + torch.tensor([[1.0, -1.0, 0.0, 0.0]]), returns, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))
