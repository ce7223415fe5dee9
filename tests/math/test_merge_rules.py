"""Merge rules on small hand-made tensors (posttrain.math.merging)."""

import math

import pytest
import torch

from posttrain.math.merging import (
    dare_drop,
    disjoint_merge,
    elect_sign,
    merge_tensors,
    slerp,
    task_arithmetic,
    ties_merge,
    trim_by_magnitude,
    weighted_average,
)


def test_weighted_average_by_hand():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert torch.allclose(weighted_average([a, b], [1, 3]), torch.tensor([2.5, 5.0]))  # (1*a + 3*b) / 4
    assert torch.allclose(weighted_average([a, b], [1, 3], normalize=False), torch.tensor([10.0, 20.0]))


def test_task_arithmetic_by_hand():
    base = torch.tensor([1.0, 1.0])
    out = task_arithmetic(base, [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])], [1.0, 0.5], scale=2.0)
    assert torch.allclose(out, torch.tensor([1 + 2 * 1.0, 1 + 2 * 0.5 * 2.0]))


def test_trim_keeps_largest_magnitudes():
    delta = torch.tensor([0.1, -5.0, 3.0, 0.2])
    assert torch.equal(trim_by_magnitude(delta, 0.5), torch.tensor([0.0, -5.0, 3.0, 0.0]))
    assert torch.equal(trim_by_magnitude(delta, 0.1), torch.tensor([0.0, -5.0, 0.0, 0.0]))  # at least one kept
    assert torch.equal(trim_by_magnitude(delta, 1.0), delta)


def test_ties_sign_election_and_disjoint_mean():
    deltas = torch.tensor([[3.0, -1.0, 2.0], [-1.0, -2.0, -4.0], [-1.0, 4.0, 1.0]])
    sign = elect_sign(deltas)  # column sums 1, 1, -1
    assert torch.equal(sign, torch.tensor([1.0, 1.0, -1.0]))
    # only the agreeing entries are averaged: column 0 -> {3}, column 1 -> {4}, column 2 -> {-4}
    assert torch.allclose(disjoint_merge(deltas, [1, 1, 1], sign), torch.tensor([3.0, 4.0, -4.0]))
    base = torch.tensor([10.0, 10.0, 10.0])
    merged = ties_merge(base, list(base + deltas), [1, 1, 1], density=1.0)
    assert torch.allclose(merged, torch.tensor([13.0, 14.0, 6.0]))


def test_ties_trim_then_weighted_election():
    base = torch.zeros(4)
    a = torch.tensor([4.0, -0.1, 1.0, -3.0])  # density 0.5 keeps 4, -3
    b = torch.tensor([-1.0, 0.2, 2.0, -0.5])  # density 0.5 keeps -1, 2
    # weighted sums of the trimmed vectors (w = 1, 3): [4 - 3, 0, 6, -3] -> signs + + + -
    merged = ties_merge(base, [a, b], [1.0, 3.0], density=0.5)
    assert torch.allclose(merged, torch.tensor([4.0, 0.0, 2.0, -3.0]))


def test_dare_rescale_keeps_the_expectation():
    delta = torch.full((200_000,), 2.0)
    dropped = dare_drop(delta, 0.7, torch.Generator().manual_seed(0))
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.005
    assert torch.allclose(dropped[kept], torch.tensor(2.0 / 0.3))
    assert abs(dropped.mean().item() - 2.0) < 0.03  # E[m tau / (1 - p)] = tau
    again = dare_drop(delta, 0.7, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)  # seeded: reproducible


def test_dare_merge_and_dare_ties():
    base, a = torch.zeros(1000), torch.ones(1000)
    out = merge_tensors("dare", [a], [1.0], base, drop_rate=0.5, generator=torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    out = merge_tensors("ties", [a, -a], [1.0, 1.0], base, drop_rate=0.5, generator=torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) <= {0.0, 2.0, -2.0}  # survivors rescaled, never summed across signs


def test_slerp_ends_identity_and_geodesic():
    g = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert torch.allclose(slerp(0.0, v0, v1), v0, atol=1e-6)
    assert torch.allclose(slerp(1.0, v0, v1), v1, atol=1e-6)
    assert torch.allclose(slerp(0.3, v0, v0), v0, atol=1e-6)
    mid = slerp(0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))  # on the circle, not the chord
    # colinear inputs (sin Omega -> 0) fall back to the linear interpolation
    assert torch.allclose(slerp(0.25, v0, 2 * v0), 0.75 * v0 + 0.25 * 2 * v0)


def test_dispatch_errors():
    a = torch.ones(3)
    with pytest.raises(ValueError, match="needs a base"):
        merge_tensors("ties", [a, a], [1, 1])
    with pytest.raises(ValueError, match="exactly two"):
        merge_tensors("slerp", [a, a, a], [1, 1, 1])
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_tensors("soup", [a], [1])
