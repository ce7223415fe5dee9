"""The statistics behind the harness's numbers, as pure functions of Python floats (standard library only).

Every metric reports a value, the sample size it rests on and, where it makes sense, a standard error, so that
``posttrain compare`` can tell a change from noise. Conventions:

- a mean over n independent samples has SE = s / sqrt(n), with s the sample standard deviation (n - 1 in the
  denominator), which is what lm-evaluation-harness reports; for 0/1 outcomes that is sqrt(p (1 - p) / (n - 1));
- a per-token average over sequences is a ratio of sums; tokens of one sequence are not independent, sequences are,
  so its SE comes from the ratio estimator (delta method), not from the token count;
- two runs' values differ by more than noise when |a - b| > z sqrt(SE_a^2 + SE_b^2) (independent samples: a
  conservative test when both runs answered the same prompts).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, float | None]:
    """x_bar = (1/n) sum_i x_i and SE(x_bar) = s / sqrt(n), s^2 = sum_i (x_i - x_bar)^2 / (n - 1).

    The SE is None for a single value (no spread to estimate). Raises ValueError for no values."""
    if not values:
        raise ValueError("the mean of zero values is undefined")
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def ratio_and_standard_error(numerators: Sequence[float], denominators: Sequence[float]) -> tuple[float, float | None]:
    """R = sum_i a_i / sum_i b_i and its delta-method standard error (Cochran 1977, *Sampling Techniques*, 6.4):

        SE(R) = sqrt( n / (n - 1) * sum_i (a_i - R b_i)^2 ) / sum_i b_i

    For a per-token mean over sequences: a_i is sequence i's sum (e.g. its NLL), b_i its token count."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"need matching, non-empty numerators and denominators, got {len(numerators)} and "
                         f"{len(denominators)}")
    total = math.fsum(denominators)
    if total <= 0:
        raise ValueError("the denominators sum to zero: the ratio is undefined")
    ratio = math.fsum(numerators) / total
    n = len(numerators)
    if n < 2:
        return ratio, None
    residuals = math.fsum((a - ratio * b) ** 2 for a, b in zip(numerators, denominators))
    return ratio, math.sqrt(n / (n - 1) * residuals) / total


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[float]) -> tuple[float, float | None]:
    """PPL = exp( sum_i NLL_i / sum_i T_i ), the exponential of the mean negative log-likelihood per token (nats)
    over all scored tokens (Jelinek et al. 1977), and its SE by the delta method: SE(PPL) = PPL * SE(mean NLL)."""
    mean_nll, nll_se = ratio_and_standard_error(nll_sums, token_counts)
    value = math.exp(mean_nll)
    return value, None if nll_se is None else value * nll_se


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code", https://arxiv.org/abs/2107.03374, eq. 1):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that at least one of k samples drawn without replacement from the n is correct. The product form
    1 - prod_{i = n - c + 1}^{n} (1 - k / i) avoids the huge binomials (the paper's numpy version)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def describe(values: Sequence[float]) -> dict[str, float]:
    """Mean, median and sample standard deviation (0 for a single value) of a non-empty list."""
    if not values:
        raise ValueError("cannot describe zero values")
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": math.fsum(values) / len(values), "median": float(statistics.median(values)), "std": spread}


def difference_noise(stderr_a: float | None, stderr_b: float | None) -> float | None:
    """SE of a - b for independent estimates: sqrt(SE_a^2 + SE_b^2); None when either SE is unknown."""
    if stderr_a is None or stderr_b is None:
        return None
    return math.hypot(stderr_a, stderr_b)
