"""The harness's statistics against the formulas, computed by hand and by brute force."""

import itertools
import math
import statistics

import pytest

from posttrain.eval.estimators import (
    describe,
    difference_noise,
    mean_and_standard_error,
    pass_at_k,
    perplexity,
    ratio_and_standard_error,
)


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (20, 0, 4), (20, 20, 7), (200, 13, 10), (7, 1, 7)])
def test_pass_at_k_is_the_unbiased_formula_of_chen_et_al(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_equals_the_share_of_k_subsets_holding_a_correct_sample():
    outcomes = [True, False, False, True, False, False]  # n = 6 samples, c = 2 correct
    for k in range(1, len(outcomes) + 1):
        subsets = list(itertools.combinations(outcomes, k))
        brute_force = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(len(outcomes), sum(outcomes), k) == pytest.approx(brute_force, abs=1e-12)


def test_pass_at_1_is_the_fraction_correct_and_edges_are_exact():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # only 2 wrong samples: every 3-subset has a correct one
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_mean_standard_error_uses_the_sample_standard_deviation():
    values = [1.0, 2.0, 4.0, 7.0]
    mean, stderr = mean_and_standard_error(values)
    assert mean == 3.5
    assert stderr == pytest.approx(statistics.stdev(values) / 2)
    outcomes = [1.0] * 3 + [0.0] * 7  # a proportion: sqrt(p (1 - p) / (n - 1))
    assert mean_and_standard_error(outcomes)[1] == pytest.approx(math.sqrt(0.3 * 0.7 / 9))
    assert mean_and_standard_error([5.0]) == (5.0, None)


def test_ratio_standard_error_by_hand():
    nll, tokens = [2.0, 6.0, 4.0], [1.0, 2.0, 1.0]
    ratio, stderr = ratio_and_standard_error(nll, tokens)
    assert ratio == 3.0
    residuals = (2 - 3) ** 2 + (6 - 6) ** 2 + (4 - 3) ** 2
    assert stderr == pytest.approx(math.sqrt(3 / 2 * residuals) / 4)


def test_perplexity_is_exp_of_the_mean_token_nll():
    value, stderr = perplexity([2.0, 6.0, 4.0], [1.0, 2.0, 1.0])
    assert value == pytest.approx(math.exp(3.0))
    assert stderr == pytest.approx(value * ratio_and_standard_error([2.0, 6.0, 4.0], [1.0, 2.0, 1.0])[1])


def test_describe_and_noise():
    spread = statistics.stdev([1, 2, 3, 10])
    assert describe([1, 2, 3, 10]) == {"mean": 4.0, "median": 2.5, "std": pytest.approx(spread)}
    assert describe([4])["std"] == 0.0
    assert difference_noise(0.3, 0.4) == pytest.approx(0.5)
    assert difference_noise(None, 0.4) is None
