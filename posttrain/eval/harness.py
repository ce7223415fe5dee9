"""``evaluate``: run a suite of metrics on a model and write ``evaluation.json`` and its samples file.

One harness for every method: a trained run's ``final/``, the embedded model, a hub model, or a model in memory.
The files are rewritten atomically after every metric, so an interrupted or partly failing evaluation keeps all it
computed. A metric that raises is recorded as failed (with its error) and the next one runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from posttrain.version import __version__
from posttrain.errors import ModelLoadError
from posttrain.eval.context import EvalContext, read_run_config
from posttrain.eval.evalfile import FORMAT, FORMAT_VERSION, samples_path
from posttrain.eval.result import MetricResult, describe_error
from posttrain.eval.suite import Suite, SuiteEntry, load_suite
from posttrain.io import atomic_write_text
from posttrain.models import BUILTIN_SPECS, EMBEDDED_DEFAULT, load_model

log = logging.getLogger(__name__)
MAX_FAILURES_KEPT = 20  # per metric, in evaluation.json; the count is always complete


def evaluate(model=EMBEDDED_DEFAULT, suite: str | Path | list | Suite = "default", seed: int = 0,
             out: str | Path | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 32,
             progress: bool = True, label: str | None = None) -> dict:
    """Evaluate ``model`` (a model spec, or a ``(model, tokenizer)`` pair) on ``suite`` and return the evaluation.

    ``out``: where evaluation.json goes (its samples next to it, ``<stem>_samples.jsonl``); by default
    ``<model folder>/evaluation.json`` for a folder, and no files for anything else. ``batch_size``: completions
    generated together. ``label``: what the evaluation calls an in-memory model (default: its ``name_or_path``); a
    trainer passes its ``final/`` folder, so that ``auto`` finds the model the run started from. The suite is checked
    before the model loads, so a typo costs no time."""
    suite = load_suite(suite)
    if isinstance(model, (str, Path)):
        spec = str(model)
        policy, tokenizer = load_evaluated_model(spec, dtype, device)
        if out is None and Path(spec).is_dir():
            out = Path(spec) / "evaluation.json"
    else:
        policy, tokenizer = model
        spec = label or getattr(getattr(policy, "config", None), "name_or_path", None) or type(policy).__name__
    parameter = next(policy.parameters())
    report = Report(Path(out) if out is not None else None, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "posttrain_version": __version__, "model": spec,
        "seed": seed, "suite": suite.to_dict(), "device": str(parameter.device),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, progress)
    context = EvalContext(policy, tokenizer, spec, seed, device, dtype, batch_size)
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            for entry in suite.entries:
                report.run(entry, context)
    finally:
        policy.train(was_training)
    return report.finish()


def load_evaluated_model(spec: str, dtype: str = "auto", device: str = "auto"):
    """``load_model`` with the mistakes people make with model paths named plainly (a file, a run folder)."""
    path = Path(spec).expanduser()
    if path.is_file():
        raise ModelLoadError(f"{spec} is a file, not a model: give a model folder, a built-in name "
                             f"({', '.join(BUILTIN_SPECS)}) or a hub id")
    if path.is_dir() and not (path / "adapter_config.json").is_file():
        config = path / "config.json"
        if not config.is_file():
            raise ModelLoadError(f"{spec} is a folder but not a model: it has no config.json (a full model) or "
                                 f"adapter_config.json (a LoRA adapter){_run_hint(path)}")
        if read_run_config(config) is not None:
            raise ModelLoadError(f"{spec} is a training run's folder, not a model{_run_hint(path)}")
    try:
        model, tokenizer = load_model(spec, dtype, device)
    except (OSError, ValueError) as exc:  # transformers' complaints about a folder that is not a model
        raise ModelLoadError(f"{spec}: could not load a model from it ({exc})") from None
    model.requires_grad_(False)
    return model, tokenizer


def _run_hint(path: Path) -> str:
    return f"; evaluate its trained model: --model {path / 'final'}" if (path / "final").is_dir() else ""


class Report:
    """The evaluation being written: header, metrics, per-entry status, samples; saved after every metric."""

    def __init__(self, out: Path | None, header: dict, progress: bool):
        self.out, self.progress, self.started = out, progress, time.perf_counter()
        self.samples_file = samples_path(out) if out is not None else None
        self.data = {**header, "status": "running", "samples": self.samples_file.name if out else None,
                     "metrics": {}, "entries": {}}
        self.sample_lines: list[str] = []
        self.save()

    def run(self, entry: SuiteEntry, context: EvalContext) -> None:
        started = time.perf_counter()
        try:
            result = entry.run(context)
        except Exception as exc:
            log.debug("metric %s failed", entry.name, exc_info=True)
            result, error = None, describe_error(exc)
        record: dict = {"metric": entry.metric, "time_s": round(time.perf_counter() - started, 2)}
        if result is None:
            record.update(status="failed", error=error)
        elif result.skipped:
            record.update(status="skipped", reason=result.skipped)
        else:
            record.update(status="ok", failed_samples=len(result.failures),
                          failures=result.failures[:MAX_FAILURES_KEPT], details=result.details)
            self.add(entry.name, result)
        self.data["entries"][entry.name] = record
        self.save()
        if self.progress:
            if result is not None and result.values:
                sub, value = next(iter(result.values.items()))
                outcome = f": {sub or entry.name} {_number(value.value)}"
            else:
                outcome = f": {record.get('error') or record.get('reason')}" if record["status"] != "ok" else ""
            print(f"[eval] {entry.name}: {record['status']} ({record['time_s']:.1f} s){outcome}", file=sys.stderr,
                  flush=True)

    def add(self, name: str, result: MetricResult) -> None:
        for sub, value in result.values.items():
            self.data["metrics"][f"{name}/{sub}" if sub else name] = value.to_dict()
        self.sample_lines += [json.dumps({"metric": name, **sample}, default=str) + "\n" for sample in result.samples]

    def save(self) -> None:
        if self.out is None:
            return
        atomic_write_text(self.samples_file, "".join(self.sample_lines))  # replaces a previous evaluation's too
        atomic_write_text(self.out, json.dumps(self.data, indent=2, default=str) + "\n")

    def finish(self) -> dict:
        failed = [name for name, entry in self.data["entries"].items() if entry["status"] == "failed"]
        self.data.update(status="complete", failed_metrics=failed,
                         time_s=round(time.perf_counter() - self.started, 1))
        self.save()
        return self.data


def summary_table(evaluation: dict) -> str:
    """The metrics of an evaluation as aligned text: name, value +- standard error, sample size."""
    rows = [(name, _number(m["value"]) + (f" ± {m['stderr']:.2g}" if m.get("stderr") is not None else ""),
             str(m["n"])) for name, m in evaluation["metrics"].items()]
    rows += [(name, entry["status"], entry.get("error") or entry.get("reason", ""))
             for name, entry in evaluation["entries"].items() if entry["status"] != "ok"]
    width = max((len(r[0]) for r in rows), default=6)
    value_width = max((len(r[1]) for r in rows), default=5)
    lines = [f"{'metric':<{width}}  {'value':<{value_width}}  n"]
    lines += [f"{name:<{width}}  {value:<{value_width}}  {n}" for name, value, n in rows]
    return "\n".join(lines)


def _number(value) -> str:
    return "—" if value is None else f"{value:.4g}"
