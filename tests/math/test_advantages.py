"""Advantage, return and policy-loss functions on hand-computed vectors (the working is in each docstring)."""

import math

import torch

from posttrain.math import (
    clipped_policy_loss,
    clipped_value_loss,
    discounted_returns,
    generalized_advantage_estimation,
    group_advantages,
    kl_estimate,
    token_gae,
    whiten,
)


def test_group_advantages_population_std():
    """Group [1, 2, 3]: mean 2, population std sqrt(2/3) = 0.8165 -> [-1.2247, 0, 1.2247]; equal rewards -> zeros."""
    out = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), group_size=3, eps=0.0 + 1e-12)
    torch.testing.assert_close(out, torch.tensor([-1.2247, 0.0, 1.2247, 0.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 3.0]), 2, scale="none"), torch.tensor([-1.0, 1.0]))


def test_discounted_returns_restart_at_episode_end():
    """r = [1, 1, 1 | 1, 1], gamma 0.5, end after step 3: G = [1.75, 1.5, 1 | 1.5, 1]."""
    rewards = torch.ones(5)
    end = torch.tensor([0, 0, 1, 0, 1])
    torch.testing.assert_close(discounted_returns(rewards, end, 0.5), torch.tensor([1.75, 1.5, 1.0, 1.5, 1.0]))


def test_gae_terminated_vs_truncated():
    """One step, r = 1, V(s) = 0.5, V(s') = 2, gamma 0.9:
    terminated: delta = 1 - 0.5 = 0.5; truncated (bootstrap through the time limit): delta = 1 + 0.9 * 2 - 0.5 = 2.3."""
    r, v, nv = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([2.0])
    adv_term, ret_term = generalized_advantage_estimation(r, v, nv, torch.tensor([1]), torch.tensor([1]), 0.9, 0.95)
    adv_trunc, _ = generalized_advantage_estimation(r, v, nv, torch.tensor([0]), torch.tensor([1]), 0.9, 0.95)
    assert math.isclose(adv_term.item(), 0.5) and math.isclose(ret_term.item(), 1.0)
    assert math.isclose(adv_trunc.item(), 2.3, rel_tol=1e-6)


def test_gae_two_steps_by_hand():
    """r = [0, 1], V = [0.2, 0.4], terminal after step 2, gamma = 1, lambda = 0.5:
    delta_2 = 1 - 0.4 = 0.6; delta_1 = 0 + 0.4 - 0.2 = 0.2; A_1 = 0.2 + 0.5 * 0.6 = 0.5."""
    adv, ret = generalized_advantage_estimation(
        torch.tensor([0.0, 1.0]), torch.tensor([0.2, 0.4]), torch.tensor([0.4, 0.0]),
        torch.tensor([0, 1]), torch.tensor([0, 1]), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.6]))
    torch.testing.assert_close(ret, torch.tensor([0.7, 1.0]))


def test_token_gae_matches_the_general_form_and_ignores_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 0.6, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, _ = token_gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    # lambda = gamma = 1: A_t = (sum of future rewards) - V_t
    torch.testing.assert_close(adv, torch.tensor([[0.9, 0.8, 0.7, 0.0], [1.5, 1.4, 0.0, 0.0]]))


def test_clipped_policy_loss_cases():
    """A = +1, ratio 1.5 with eps 0.2: min(1.5, 1.2) = 1.2 -> loss -1.2, clipped. A = -1, ratio 0.5: min(-0.5, -0.8)
    = -0.8 -> loss 0.8, clipped. A = +1, ratio 0.5: min(0.5, 0.8) = 0.5 -> loss -0.5, not clipped."""
    logps = torch.log(torch.tensor([1.5, 0.5, 0.5]))
    out = clipped_policy_loss(logps, torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), epsilon=0.2)
    torch.testing.assert_close(out.loss, torch.tensor([-1.2, 0.8, -0.5]))
    assert out.clipped.tolist() == [True, True, False]
    high = clipped_policy_loss(logps[:1], torch.zeros(1), torch.ones(1), epsilon=0.2, epsilon_high=0.28)
    torch.testing.assert_close(high.loss, torch.tensor([-1.28]))


def test_clipped_value_loss():
    """old V 0, new V 1, return 2, clip 0.2: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 0.5 * 3.24 = 1.62."""
    loss, clipped = clipped_value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]), 0.2)
    torch.testing.assert_close(loss, torch.tensor([1.62]))
    assert clipped.item()


def test_kl_estimators():
    """logp = ln 0.5, ref = ln 0.25: log r = ln 0.5 = -0.6931; k1 = 0.6931, k2 = 0.2402, k3 = (0.5 - 1) + 0.6931."""
    logps, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert math.isclose(kl_estimate(logps, ref, "k1").item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(kl_estimate(logps, ref, "k2").item(), 0.5 * math.log(2) ** 2, rel_tol=1e-6)
    assert math.isclose(kl_estimate(logps, ref, "k3").item(), -0.5 + math.log(2), rel_tol=1e-6)
    assert kl_estimate(ref, ref, "k3").item() == 0.0


def test_whiten():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    out = whiten(x, torch.tensor([1, 1, 1, 0]))
    torch.testing.assert_close(out, torch.tensor([-1.2247, 0.0, 1.2247, 0.0]), atol=1e-4, rtol=0)
