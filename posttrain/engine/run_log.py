"""The run's log: ``log_history.jsonl`` (one JSON object per logged step), mirrored to the trackers, the logging window
that averages a step's figures until they are written, and cutting step-keyed JSONL files back on resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from posttrain.io import atomic_write_text

log = logging.getLogger(__name__)

LOG_FILE = "log_history.jsonl"


class RunLog:
    """Appends records to ``output_dir/log_history.jsonl`` and mirrors them to the run's trackers (``report_to``);
    keeps the evaluation records of the whole run (read back from the file on resume), so an end-of-run summary needs
    no second read."""

    def __init__(self, output_dir: Path, trackers: list, echo: bool, write: bool = True):
        self.path = Path(output_dir) / LOG_FILE
        self.echo = echo and write  # without a progress bar, each record goes to the Python log as well
        self.trackers = trackers
        self.write_files = write  # False on every process but the first of a distributed run
        self.evaluations = [r for r in read_jsonl(self.path) if is_evaluation(r)]

    def write(self, record: dict) -> None:
        if is_evaluation(record):
            self.evaluations.append(record)
        if not self.write_files:
            return
        append_jsonl(self.path, [record])
        for tracker in self.trackers:
            tracker.log(record, record["step"])
        if self.echo:
            log.info(json.dumps(record))

    def write_tables(self, output_names: tuple[str, ...], step: int) -> None:
        """A method's step-keyed JSONL outputs (e.g. the samples of an evaluation): their rows of ``step``, as one
        table per file, to the trackers."""
        if not (self.trackers and self.write_files):
            return
        for name in output_names:
            rows = [r for r in read_jsonl(self.path.parent / name) if r.get("step") == step] if name.endswith(
                ".jsonl") else []
            for tracker in self.trackers if rows else ():
                tracker.log_table(Path(name).stem, rows, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def is_evaluation(record: dict) -> bool:
    return any(name.startswith("eval_") for name in record)


def append_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON line per record, appended (the run's step-keyed logs: log_history.jsonl, a method's outputs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the lines of a step-keyed JSONL file written after ``step`` (a resumed run writes them again); lines
    without a step are kept."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def empty_window() -> dict:
    return {"steps": 0, "skipped": 0, "loss": 0.0, "grad_norm": 0.0, "tokens": 0, "metrics": {}}


def accumulate_window(window: dict, loss: float, metrics: dict, tokens: int, grad_norm: float, finite: bool) -> None:
    """Add one optimizer step's figures to the window (a skipped non-finite step only counts as skipped)."""
    if finite:
        window["steps"] += 1
        window["loss"] += loss
        window["grad_norm"] += grad_norm
        for name, value in metrics.items():
            window["metrics"][name] = window["metrics"].get(name, 0.0) + value
    else:
        window["skipped"] += 1
    window["tokens"] += tokens


def window_record(window: dict, step: int, epoch: float, lr: float, elapsed: float) -> dict:
    """The logged record of a window: means over its updating steps, tokens per second over its wall time."""
    n = max(window["steps"], 1)
    record = {
        "step": step,
        "epoch": epoch,
        "loss": window["loss"] / n,
        "lr": lr,
        "grad_norm": window["grad_norm"] / n,
        "tokens_per_s": window["tokens"] / max(elapsed, 1e-9),  # non-pad input tokens
        "num_tokens": window["tokens"],
        **{name: value / n for name, value in window["metrics"].items()},
    }
    if window["skipped"]:
        record["skipped_nonfinite_steps"] = window["skipped"]
    if window.get("empty"):
        record["empty_steps"] = window["empty"]  # steps without any item carrying loss (loss 0, no update)
    return record
