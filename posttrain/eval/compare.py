"""``posttrain compare``: evaluations side by side, changes beyond noise marked, regressions against a baseline.

For each metric and each evaluation other than the baseline (the first, unless chosen):

    delta      = value - baseline value
    noise      = sqrt(SE^2 + SE_baseline^2)                         (when both have a standard error)
    marked *   when |delta| > sigmas * noise                        (default 2: a change unlikely to be chance)
    regression when the metric has a direction and it got worse by more than
               threshold * |baseline value|   (relative; default 0.05 = 5%; per metric with NAME=X)
               and, when the noise is known, by more than sigmas * noise too

Metrics without a direction (lengths, KL, probe differences) are shown but never regress.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from posttrain.errors import ConfigError, DataError
from posttrain.eval.estimators import difference_noise
from posttrain.eval.evalfile import Evaluation
from posttrain.eval.result import Value

DEFAULT_THRESHOLD = 0.05


@dataclass
class Row:
    metric: str
    higher_is_better: bool | None
    cells: list[Value | None]  # one per evaluation
    deltas: list[float | None]  # against the baseline (None for the baseline itself and where a value is missing)
    beyond_noise: list[bool]
    regression: list[bool]


@dataclass
class Comparison:
    labels: list[str]
    baseline: int
    rows: list[Row]
    sigmas: float
    default_threshold: float

    def regressions(self) -> list[str]:
        """One line per regression: which evaluation, which metric, from what to what."""
        lines = []
        for row in self.rows:
            base = row.cells[self.baseline]
            for label, cell, delta, bad in zip(self.labels, row.cells, row.deltas, row.regression):
                if bad:
                    lines.append(f"{label}: {row.metric} {base.value:.4g} -> {cell.value:.4g} ({delta:+.3g}; "
                                 f"{'higher' if row.higher_is_better else 'lower'} is better)")
        return lines

    def missing(self) -> list[str]:
        """Metrics the baseline has and another evaluation lacks (a failed metric, a different suite)."""
        return [f"{label}: no {row.metric}" for row in self.rows if row.cells[self.baseline] is not None
                for label, cell in zip(self.labels, row.cells) if cell is None]


def parse_thresholds(items: list[str] | None) -> tuple[float, dict[str, float]]:
    """``["0.1", "perplexity=0.02"]`` -> (0.1, {"perplexity": 0.02}): a default and per-metric thresholds."""
    default, per_metric = DEFAULT_THRESHOLD, {}
    for item in items or []:
        name, _, number = item.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise ConfigError(f"--threshold {item!r}: expected a number or METRIC=NUMBER, e.g. 0.05 or "
                              "perplexity=0.02") from None
        if value < 0:
            raise ConfigError(f"--threshold {item!r}: must not be negative")
        if name:
            per_metric[name] = value
        else:
            default = value
    return default, per_metric


def compare(evaluations: list[Evaluation], baseline: int = 0, thresholds: list[str] | None = None,
            sigmas: float = 2.0) -> Comparison:
    default, per_metric = parse_thresholds(thresholds)
    names = list(dict.fromkeys(name for e in evaluations for name in e.metrics))
    rows = []
    for name in names:
        cells = [e.metrics.get(name) for e in evaluations]
        # our files say each metric's direction; readers of the other formats set it from the name
        direction = next((c.higher_is_better for c in cells if c is not None and c.higher_is_better is not None), None)
        row = Row(name, direction, cells, [None] * len(cells), [False] * len(cells), [False] * len(cells))
        base = cells[baseline]
        for i, cell in enumerate(cells):
            if i == baseline or cell is None or base is None or cell.value is None or base.value is None:
                continue
            delta = cell.value - base.value
            noise = difference_noise(base.stderr, cell.stderr)
            row.deltas[i] = delta
            row.beyond_noise[i] = noise is not None and abs(delta) > sigmas * noise
            worse = None if direction is None else -delta if direction else delta
            row.regression[i] = (worse is not None and worse > per_metric.get(name, default) * abs(base.value)
                                 and (noise is None or worse > sigmas * noise))
        rows.append(row)
    return Comparison([e.label for e in evaluations], baseline, rows, sigmas, default)


def different_methods(evaluations: list[Evaluation]) -> list[str]:
    """Entries computed differently across evaluations (preference accuracy from a DPO implicit reward in one and
    SimPO's in another): their values do not compare, whatever the table says."""
    notes = []
    kinds = [e.kind for e in evaluations]
    if "posttrain eval" in kinds and any(kind.startswith("trainer") for kind in kinds):
        notes.append("harness evaluations (posttrain eval, eval_suite) and trainers' own evaluation.json are side by "
                     "side: a metric of the same name may rest on other data there, so compare like with like "
                     "(RUN reads the harness's, RUN@trainer and RUN@baseline the trainer's)")
    for name in dict.fromkeys(name for e in evaluations for name in e.entries):
        kinds = {e.label: e.entries[name].get("details", {}).get("reward") for e in evaluations if name in e.entries}
        if len({kind for kind in kinds.values() if isinstance(kind, str)}) > 1:
            notes.append(f"{name} used different rewards ({', '.join(f'{k}: {v}' for k, v in kinds.items())}); "
                         "set the same `reference` (or `reward_model`) to compare it")
    return notes


def _arrow(row: Row) -> str:
    return {True: " ↑", False: " ↓", None: ""}[row.higher_is_better]


def _cell(row: Row, i: int) -> str:
    cell = row.cells[i]
    if cell is None or cell.value is None:
        return "—"
    text = f"{cell.value:.4g}" + (f" ±{cell.stderr:.2g}" if cell.stderr is not None else "")
    if row.deltas[i] is not None:
        text += f" ({row.deltas[i]:+.3g}{'*' if row.beyond_noise[i] else ''}{' !' if row.regression[i] else ''})"
    return text


def legend(comparison: Comparison) -> str:
    return (f"↑ higher is better, ↓ lower is better; (+d): change from {comparison.labels[comparison.baseline]}; "
            f"*: larger than {comparison.sigmas:g} standard errors of the difference; !: regression (worse by more "
            f"than {comparison.default_threshold:g} of the baseline value and than the noise)")


def text_table(comparison: Comparison) -> str:
    header = ["metric"] + [label + (" (baseline)" if i == comparison.baseline else "")
                           for i, label in enumerate(comparison.labels)]
    body = [[row.metric + _arrow(row)] + [_cell(row, i) for i in range(len(comparison.labels))]
            for row in comparison.rows]
    widths = [max(len(line[c]) for line in [header] + body) for c in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in [header] + body]
    return "\n".join(lines + ["", legend(comparison)])


def markdown_table(comparison: Comparison) -> str:
    header = ["metric"] + [f"`{label}`" + (" (baseline)" if i == comparison.baseline else "")
                           for i, label in enumerate(comparison.labels)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison.rows:
        cells = [f"**{_cell(row, i)}**" if row.regression[i] else _cell(row, i) for i in range(len(comparison.labels))]
        lines.append("| " + " | ".join([row.metric + _arrow(row)] + cells) + " |")
    return "\n".join(lines + ["", legend(comparison), ""])


def csv_table(comparison: Comparison) -> str:
    """Long format, one line per (metric, evaluation): easy to load into a dataframe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "higher_is_better", "evaluation", "is_baseline", "value", "stderr", "n", "delta",
                     "beyond_noise", "regression"])
    for row in comparison.rows:
        for i, (label, cell) in enumerate(zip(comparison.labels, row.cells)):
            if cell is not None:
                writer.writerow([row.metric, row.higher_is_better, label, i == comparison.baseline, cell.value,
                                 cell.stderr, cell.n, row.deltas[i], row.beyond_noise[i], row.regression[i]])
    return buffer.getvalue()


def probe_table(evaluations: list[Evaluation], max_chars: int = 200) -> str:
    """The reward-hacking probes side by side (Markdown): per request and variant, each evaluation's reward, length
    and the start of its answer, read from the evaluations' samples files."""
    answers: dict[tuple[str, str], dict[str, dict]] = {}
    for evaluation in evaluations:
        names = {name for name, entry in evaluation.entries.items() if entry.get("metric") == "probes"}
        if not names or evaluation.samples is None or not evaluation.samples.is_file():
            continue
        for line in evaluation.samples.read_text().splitlines():
            record = json.loads(line)
            if record.get("metric") in names:
                answers.setdefault((record["group"], record["variant"]), {})[evaluation.label] = record
    if not answers:
        raise DataError("none of these evaluations has probe samples: evaluate with a suite that has the `probes` "
                        "metric (the default suite does)")
    labels = [e.label for e in evaluations]
    lines = ["# Reward-hacking probes", ""]
    for group in dict.fromkeys(g for g, _ in answers):
        lines += [f"## {group}", "", "| variant | " + " | ".join(f"`{label}`" for label in labels) + " |",
                  "|" + "---|" * (len(labels) + 1)]
        for (g, variant), by_label in answers.items():
            if g == group:
                lines.append(f"| {variant} | " + " | ".join(_probe_cell(by_label.get(label), max_chars)
                                                             for label in labels) + " |")
        lines.append("")
    return "\n".join(lines)


def _probe_cell(record: dict | None, max_chars: int) -> str:
    if record is None:
        return "—"
    reward = "—" if record.get("reward") is None else f"{record['reward']:.3g}"
    text = " ".join(str(record.get("output", "")).split()).replace("|", "\\|")
    text = text if len(text) <= max_chars else text[:max_chars] + "…"
    return f"reward {reward}, {record.get('words')} words: {text}"
