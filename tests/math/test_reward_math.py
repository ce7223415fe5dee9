"""Reward-model losses against values worked out by hand (the working is in each docstring) and their limits."""

import math

import pytest
import torch

from posttrain.math import bradley_terry_loss, reward_centering_penalty

t = torch.tensor


def test_bradley_terry_is_ln2_at_equal_scores():
    """r_w = r_l: -log sigma(0) = ln 2 = 0.693147, whatever the common value."""
    scores = t([-3.0, 0.0, 7.5])
    assert torch.allclose(bradley_terry_loss(scores, scores), torch.full((3,), math.log(2)))


def test_bradley_terry_hand_computed():
    """(2, 1): -log sigma(1) = log(1 + e^-1) = log(1.367879) = 0.313262.
    (0, 3): -log sigma(-3) = log(1 + e^3) = log(21.085537) = 3.048587 (a wrongly ranked pair costs more).
    Gradient at (2, 1): dL/dr_w = -sigma(-1) = -0.268941, dL/dr_l = +0.268941."""
    chosen, rejected = t([2.0, 0.0], requires_grad=True), t([1.0, 3.0], requires_grad=True)
    losses = bradley_terry_loss(chosen, rejected)
    assert losses.tolist() == pytest.approx([0.313262, 3.048587], abs=1e-6)
    losses[0].backward()
    assert chosen.grad.tolist() == pytest.approx([-0.268941, 0.0], abs=1e-6)
    assert rejected.grad.tolist() == pytest.approx([0.268941, 0.0], abs=1e-6)


def test_bradley_terry_margin_hand_computed():
    """A margin asks for r_w - r_l > m: (2, 1) with m = 1 gives -log sigma(0) = ln 2 = 0.693147; with m = 3,
    -log sigma(-2) = log(1 + e^2) = log(8.389056) = 2.126928; with m = 0 it is the plain loss 0.313262."""
    losses = bradley_terry_loss(t([2.0, 2.0, 2.0]), t([1.0, 1.0, 1.0]), margin=t([1.0, 3.0, 0.0]))
    assert losses.tolist() == pytest.approx([0.693147, 2.126928, 0.313262], abs=1e-6)


def test_bradley_terry_is_stable_for_large_differences():
    """d = -100: log(1 + e^100) = 100 + log(1 + e^-100) = 100 (no overflow); d = +100: log(1 + e^-100) ~ 3.7e-44."""
    losses = bradley_terry_loss(t([0.0, 100.0]), t([100.0, 0.0]))
    assert losses.tolist() == pytest.approx([100.0, 0.0], abs=1e-6)


def test_centering_penalty_hand_computed():
    """(r_w + r_l)^2: (2, -2) -> 0 (centred); (1.5, 0.5) -> 2^2 = 4; (-1, -2) -> 9.
    Gradient at (1.5, 0.5): d/dr_w = d/dr_l = 2 (r_w + r_l) = 4 (it moves both scores down, not their difference)."""
    chosen, rejected = t([2.0, 1.5, -1.0], requires_grad=True), t([-2.0, 0.5, -2.0], requires_grad=True)
    penalty = reward_centering_penalty(chosen, rejected)
    assert penalty.tolist() == pytest.approx([0.0, 4.0, 9.0])
    penalty[1].backward()
    assert chosen.grad.tolist() == pytest.approx([0.0, 4.0, 0.0])
    assert rejected.grad.tolist() == pytest.approx([0.0, 4.0, 0.0])


def test_bradley_terry_plus_centering_hand_computed():
    """(2, 1), coefficient 0.01: 0.313262 + 0.01 * (2 + 1)^2 = 0.313262 + 0.09 = 0.403262. Shifting both scores by
    -1.5 to (0.5, -0.5) keeps the Bradley-Terry part and zeroes the penalty: 0.313262."""
    chosen, rejected = t([2.0, 0.5]), t([1.0, -0.5])
    total = bradley_terry_loss(chosen, rejected) + 0.01 * reward_centering_penalty(chosen, rejected)
    assert total.tolist() == pytest.approx([0.403262, 0.313262], abs=1e-6)
