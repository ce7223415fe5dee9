"""What a metric returns: named values with their sample size and standard error, per-sample records, and the
samples it could not score.

A metric fails on one sample (a reward function raising on an odd completion, a checker choking) without failing as
a whole: the failure is recorded with the sample's index and the error, the sample is left out of the value, and
``n`` counts the samples the value rests on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Value:
    """One number of a metric. ``higher_is_better`` says which way is an improvement (None: neither, e.g. a length),
    which `compare` needs to call a change a regression."""

    value: float | None
    n: int
    stderr: float | None = None
    higher_is_better: bool | None = None

    def to_dict(self) -> dict:
        return {"value": self.value, "n": self.n, "stderr": self.stderr, "higher_is_better": self.higher_is_better}


@dataclass
class MetricResult:
    """``values``: sub-name -> Value; the empty sub-name is the metric's headline value (stored under the entry's
    name, the others under ``name/sub``). ``samples``: one JSON-able dict per scored item (prompt, output, scores).
    ``failures``: ``{"index", "error"}`` per item that could not be scored. ``details``: what the metric used (the
    reference model, the judge...). ``skipped``: why the metric did not apply (no reference model to compare with)."""

    values: dict[str, Value] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    skipped: str | None = None


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def score_each(score: Callable[..., Sequence], columns: Sequence[list], failures: list[dict],
               what: str = "score") -> list:
    """``score(*columns)`` over all items at once (batched: fast); if that raises, item by item, so that one bad item
    costs only itself. Items that fail are recorded in ``failures`` and come back as None.

    We catch every Exception on purpose: the scorer may be user code (a reward function) that raises anything."""
    n = len(columns[0])
    try:
        values = list(score(*columns))
        if len(values) == n:
            return values
        raise ValueError(f"{what} returned {len(values)} values for {n} items")
    except Exception as exc:  # noqa: BLE001 - isolate the failing items below
        log.warning("%s failed on a batch of %d (%s); scoring one item at a time", what, n, describe_error(exc))
    out = []
    for i in range(n):
        try:
            (value,) = score(*[[column[i]] for column in columns])
            out.append(value)
        except Exception as exc:  # noqa: BLE001
            failures.append({"index": i, "error": f"{what}: {describe_error(exc)}"})
            out.append(None)
    return out


def try_each(check: Callable, items: Sequence, failures: list[dict], what: str = "check") -> list:
    """``check(item)`` for each item; an item whose check raises is recorded in ``failures`` and gives None."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(check(item))
        except Exception as exc:  # noqa: BLE001 - user and task code may raise anything; record it and go on
            failures.append({"index": i, "error": f"{what}: {describe_error(exc)}"})
            out.append(None)
    return out
