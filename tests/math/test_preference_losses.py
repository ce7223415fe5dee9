"""Preference losses against values worked out by hand (the working is in each docstring) and their limits."""

import math

import pytest
import torch

from posttrain.math.preference import (
    cdpo_loss,
    dpo_loss,
    dpo_margin,
    hinge_dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    log_odds,
    orpo_loss,
    robust_dpo_loss,
    sigmoid_dpo_loss,
    simpo_loss,
)

t = torch.tensor


def test_dpo_sigmoid_hand_computed():
    """chosen -1, rejected -2, ref -1.5 for both: h = (-1 + 1.5) - (-2 + 1.5) = 0.5 + 0.5 = 1.
    beta 0.5: L = -log sigma(0.5) = log(1 + e^-0.5) = log(1.606531) = 0.474077.
    Implicit rewards: 0.5 * 0.5 = 0.25 (chosen), 0.5 * -0.5 = -0.25 (rejected)."""
    out = dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), beta=0.5)
    assert out.losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.25)
    assert out.rejected_rewards.item() == pytest.approx(-0.25)


def test_dpo_first_step_is_ln2_and_beta_to_zero_is_constant():
    """pi == pi_ref: h = 0 for every pair, L = -log sigma(0) = ln 2. beta -> 0: -log sigma(beta h) -> ln 2 for any h."""
    logps = t([-3.0, -10.0, -0.5])
    out = dpo_loss(logps, logps - 1.0, logps, logps - 1.0, beta=0.1)
    assert torch.allclose(out.losses, torch.full((3,), math.log(2)))
    margins = t([-50.0, -1.0, 0.0, 3.0, 80.0])
    assert torch.allclose(sigmoid_dpo_loss(margins, beta=1e-9), torch.full((5,), math.log(2)), atol=1e-7)


def test_hinge_ipo_cdpo_hand_computed():
    """hinge: beta h = 0.5 -> max(0, 1 - 0.5) = 0.5; beta h = 2 -> 0.
    IPO with tau = 0.5: target 1 / (2 tau) = 1; h = 1 -> 0, h = 0 -> 1, h = 3 -> 4.
    cDPO eps 0.1, beta h = 0.5: 0.9 * 0.474077 + 0.1 * 0.974077 = 0.426669 + 0.097408 = 0.524077
    (log sigma(-0.5) = -0.974077)."""
    assert hinge_dpo_loss(t([1.0, 4.0]), beta=0.5).tolist() == pytest.approx([0.5, 0.0])
    assert ipo_loss(t([1.0, 0.0, 3.0]), beta=0.5).tolist() == pytest.approx([0.0, 1.0, 4.0])
    assert cdpo_loss(t([1.0]), beta=0.5, label_smoothing=0.1).item() == pytest.approx(0.524077, abs=1e-6)


def test_robust_dpo_hand_computed_and_unbiased():
    """eps 0.1, beta h = 0.5: [0.9 * 0.474077 - 0.1 * 0.974077] / 0.8 = (0.426669 - 0.097408) / 0.8 = 0.411577.
    Unbiased (Chowdhury et al. 2024, Lemma 3.1): with the label flipped with probability eps,
    (1 - eps) L(h) + eps L(-h) equals the clean DPO loss -log sigma(beta h)."""
    assert robust_dpo_loss(t([1.0]), beta=0.5, label_smoothing=0.1).item() == pytest.approx(0.411577, abs=1e-6)
    h = t([-2.0, 0.3, 5.0])
    expected = (0.8 * robust_dpo_loss(h, 0.7, 0.2) + 0.2 * robust_dpo_loss(-h, 0.7, 0.2))
    assert torch.allclose(expected, sigmoid_dpo_loss(h, 0.7), atol=1e-6)
    with pytest.raises(ValueError):
        robust_dpo_loss(h, 0.7, 0.5)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = t([-4.0], requires_grad=True), t([-4.0], requires_grad=True)
    dpo_loss(chosen, rejected, t([-4.0]), t([-4.0]), beta=0.1).losses.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.05)  # -beta * sigma(-0) = -0.1 * 0.5
    assert rejected.grad.item() == pytest.approx(0.05)


def test_simpo_hand_computed_and_reference_free():
    """chosen: -2 over 4 tokens -> mean -0.5; rejected: -6 over 3 -> mean -2. beta 2: rewards -1 and -4.
    L = -log sigma(-1 - (-4) - gamma 0.5) = -log sigma(2.5) = log(1 + e^-2.5) = 0.078889."""
    out = simpo_loss(t([-2.0]), t([-6.0]), t([4.0]), t([3.0]), beta=2.0, gamma=0.5)
    assert out.losses.item() == pytest.approx(0.078889, abs=1e-6)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((-1.0, -4.0))


def test_orpo_hand_computed():
    """Means: chosen -2/4 = -0.5, rejected -6/3 = -2.
    log odds(-0.5) = -0.5 - log(1 - e^-0.5) = -0.5 - log(0.393469) = -0.5 + 0.932752 = 0.432752
    log odds(-2)   = -2 - log(1 - e^-2)     = -2 - log(0.864665)   = -2 + 0.145413   = -1.854587
    L_OR = -log sigma(2.287339) = log(1 + e^-2.287339) = log(1.101537) = 0.096706
    L = NLL 0.5 + lambda 0.1 * 0.096706 = 0.509671."""
    assert log_odds(t([-0.5, -2.0])).tolist() == pytest.approx([0.432752, -1.854587], abs=1e-6)
    out = orpo_loss(t([-2.0]), t([-6.0]), t([4.0]), t([3.0]), lam=0.1)
    assert out.losses.item() == pytest.approx(0.509671, abs=1e-6)


def test_kto_hand_computed():
    """beta 0.5, z0 0.2. Desirable, r = 1: lambda_D (1 - sigma(0.5 * 0.8)) = 1 - sigma(0.4) = 1 - 0.598688 = 0.401312.
    Undesirable, r = -1, lambda_U = 2: 2 (1 - sigma(0.5 * (0.2 + 1))) = 2 (1 - sigma(0.6)) = 2 * 0.354344 = 0.708688."""
    out = kto_loss(t([0.0, -3.0]), t([-1.0, -2.0]), t([True, False]), t(0.2), beta=0.5, undesirable_weight=2.0)
    assert out.losses.tolist() == pytest.approx([0.401312, 0.708688], abs=1e-6)
    assert out.chosen_rewards[0].item() == pytest.approx(0.5) and out.chosen_rewards[1].isnan()
    assert out.rejected_rewards[1].item() == pytest.approx(-0.5) and out.rejected_rewards[0].isnan()


def test_kto_reference_point_is_clamped_mean_and_detached():
    """z0 = max(0, mean(log pi - log pi_ref)): mean of (0.3, -0.1) = 0.1; of (-0.3, 0.1) = -0.1 -> 0."""
    logps = t([-1.0, -2.0], requires_grad=True)
    z0 = kto_reference_point(logps, t([-1.3, -1.9]))
    assert z0.item() == pytest.approx(0.1) and not z0.requires_grad
    assert kto_reference_point(t([-1.3, -1.9]), t([-1.0, -2.0])).item() == 0.0


def test_margin_is_difference_of_log_ratios():
    assert dpo_margin(t(-1.0), t(-5.0), t(-2.0), t(-3.0)).item() == pytest.approx(1.0 - (-2.0))
