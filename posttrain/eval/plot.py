"""``posttrain plot RUN``: PNG curves from a run's ``log_history.jsonl``, one figure per kind of quantity (loss,
reward, KL, accuracy, lengths, learning rate, gradient norm, entropy), written to ``RUN/plots/``.

Columns are grouped by the words in their names (``eval_rewards/accuracy`` is an accuracy, ``kl_sequence`` a KL), so
every trainer's log plots without a per-method list; a figure is drawn only for the groups the log has. Training
columns are lines (with an exponential moving average over long noisy runs), evaluation columns (``eval_*``) lines
with markers. The x axis is ``step`` (``episode`` for the Gymnasium runs). Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from posttrain.errors import DataError, require

# (figure, words): a column goes to the first figure one of whose words is a part of its name (split on / and _)
PLOT_GROUPS = [
    ("accuracy", {"accuracy", "pass", "compliance"}),
    ("kl", {"kl"}),
    ("loss", {"loss"}),
    ("length", {"length", "words", "truncated"}),
    ("reward", {"reward", "rewards", "margin", "return"}),
    ("learning_rate", {"lr"}),
    ("grad_norm", {"grad"}),
    ("entropy", {"entropy"}),
]
SMOOTH_FROM = 30  # points; shorter series are drawn as they are


def group_of(column: str) -> str | None:
    """The figure a log column belongs to, or None (throughput, timings, counts and spreads are not plotted)."""
    parts = set(column.replace("/", "_").split("_"))
    if column.endswith("_std") or parts & {"time", "tokens", "s"}:
        return None
    return next((name for name, words in PLOT_GROUPS if words & parts), None)


def read_log(run: Path) -> list[dict]:
    path = run / "log_history.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise DataError(f"{run}: no log_history.jsonl to plot (a training run's output_dir has one)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return records


def series(records: list[dict]) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """The x axis name and, per plotted column, its finite (x, value) points."""
    x_name = "step" if any("step" in r for r in records) else "episode"
    columns: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        x = record.get(x_name)
        if not isinstance(x, (int, float)):
            continue
        for name, value in record.items():
            if name != x_name and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value) and group_of(name):
                columns.setdefault(name, []).append((x, float(value)))
    return x_name, columns


def moving_average(values: list[float], beta: float = 0.9) -> list[float]:
    """m_t = beta m_{t-1} + (1 - beta) v_t, divided by 1 - beta^t so the start is not pulled towards 0 (Adam's
    bias correction; TensorBoard's smoothing)."""
    out, m = [], 0.0
    for t, value in enumerate(values, 1):
        m = beta * m + (1 - beta) * value
        out.append(m / (1 - beta**t))
    return out


def plot_run(run: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per figure group found in ``run``'s log; returns their paths."""
    require("matplotlib", "plot", "posttrain plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run = Path(run)
    x_name, columns = series(read_log(run))
    if not columns:
        raise DataError(f"{run}: log_history.jsonl has no loss, reward, KL, accuracy or other plottable column")
    out_dir = Path(out_dir) if out_dir is not None else (run if run.is_dir() else run.parent) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, _ in PLOT_GROUPS:
        names = [name for name in columns if group_of(name) == group]
        if not names:
            continue
        figure = Figure(figsize=(7, 4))
        FigureCanvasAgg(figure)  # a figure without pyplot: no global state, no display needed
        axes = figure.add_subplot()
        for name in names:
            xs, ys = zip(*columns[name])
            if name.startswith("eval_"):
                axes.plot(xs, ys, marker="o", ms=3, lw=1.5, label=name)
            elif len(ys) >= SMOOTH_FROM:
                line, = axes.plot(xs, ys, lw=0.8, alpha=0.35)
                axes.plot(xs, moving_average(list(ys)), lw=1.6, color=line.get_color(), label=f"{name} (smoothed)")
            else:
                axes.plot(xs, ys, lw=1.4, label=name)
        axes.set(xlabel=x_name, ylabel=group.replace("_", " "), title=f"{run.name}: {group.replace('_', ' ')}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = out_dir / f"{group}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    confusion = plot_confusion_matrix(run, out_dir)
    return written + ([confusion] if confusion else [])


def plot_confusion_matrix(run: Path, out_dir: Path) -> Path | None:
    """``confusion_matrix.png`` from a classifier run's evaluation.json (method: classify), if it has one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = (run if run.is_dir() else run.parent) / "evaluation.json"
    details = json.loads(path.read_text()).get("details", {}) if path.is_file() else {}
    if "confusion_matrix" not in details:
        return None
    matrix, labels = details["confusion_matrix"], details["labels"]
    size = 2.5 + 0.6 * len(labels)
    figure = Figure(figsize=(size, size))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    dark = max(max(counts) for counts in matrix) / 2
    for row, counts in enumerate(matrix):
        for column, count in enumerate(counts):
            axes.text(column, row, str(count), ha="center", va="center", fontsize=9,
                      color="white" if count > dark else "black")
    axes.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
             xlabel="predicted", ylabel="true", title=f"{run.name}: confusion matrix")
    figure.tight_layout()
    out = out_dir / "confusion_matrix.png"
    figure.savefig(out, dpi=100)
    return out
