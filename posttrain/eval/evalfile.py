"""Evaluation files: the format ``posttrain eval`` writes, and reading every evaluation file posttrain produces.

``posttrain eval`` writes (``format_version`` 1; docs/eval.md has the full description):

    {"format": "posttrain.evaluation", "format_version": 1, "posttrain_version": "0.1.0",
     "model": "runs/dpo/final", "seed": 0, "suite": {"name": "default", "entries": [...]},
     "status": "complete", "samples": "evaluation_samples.jsonl",
     "metrics": {"perplexity": {"value": 3.1, "n": 64, "stderr": 0.2, "higher_is_better": false}, ...},
     "entries": {"perplexity": {"metric": "perplexity", "status": "ok", "time_s": 1.9, "failures": [], ...}}}

Also read, for comparison: the ``evaluation.json`` trainers write at the end of a run (``{"method", "model",
"metrics": {name: {"value": v, "n_pairs": n}}, "baseline": {name: v}}``, no standard errors; ``RUN@baseline`` reads
its step-0 values) and a Gymnasium run's (``{"algorithm", "eval_mean_return", "eval_returns": [...]}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.version import __version__
from posttrain.errors import DataError
from posttrain.eval.estimators import mean_and_standard_error
from posttrain.eval.result import Value

FORMAT = "posttrain.evaluation"
FORMAT_VERSION = 1

# Trainers' files say nothing about direction: judge by the metric's last name part. Lengths, KL and the scale of a
# single reward (chosen or rejected alone) are neither better nor worse.
HIGHER_IS_BETTER = {"accuracy", "preference_accuracy", "reward", "reward_margin", "reward_gap", "token_accuracy",
                    "win_rate", "word_limit_compliance", "eval_mean_return", "mean_return_100", "refusal_rate",
                    "twin_accuracy"}
LOWER_IS_BETTER = {"perplexity", "perplexity_chosen", "loss", "eval_loss", "nll_per_token", "over_refusal"}


def direction_of(name: str) -> bool | None:
    """True: higher is better; False: lower is better; None: neither (or unknown)."""
    last = name.rsplit("/", 1)[-1]
    if last in HIGHER_IS_BETTER or last.startswith("pass@"):
        return True
    return False if last in LOWER_IS_BETTER else None


@dataclass
class Evaluation:
    """One evaluation file, normalised for comparison: metric name -> Value."""

    label: str
    path: Path
    kind: str  # "posttrain eval", "trainer (<method>)", "gym (<algorithm>)"
    model: str | None
    metrics: dict[str, Value]
    samples: Path | None = None
    entries: dict = field(default_factory=dict)
    status: str | None = None  # a harness file's: "complete", or "running" when it was interrupted


def samples_path(evaluation_path: Path) -> Path:
    """Where the per-sample records of an evaluation file go: ``evaluation.json`` -> ``evaluation_samples.jsonl``."""
    return evaluation_path.with_name(f"{evaluation_path.stem}_samples.jsonl")


def locate(argument: str, trainer: bool = False) -> Path:
    """An evaluation file, or a folder holding one: ``RUN/final/evaluation.json`` (the harness's, written by
    ``eval_suite`` or ``posttrain eval --model RUN/final``: the same suite for every method, with standard errors),
    else ``RUN/evaluation.json`` (the trainer's own). ``trainer``: the trainer's own only (``RUN@trainer``,
    ``RUN@baseline``)."""
    path = Path(argument)
    if path.is_file():
        return path
    if path.is_dir():
        candidates = [path / "evaluation.json"] if trainer else [path / "final" / "evaluation.json",
                                                                  path / "evaluation.json"]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        if trainer:
            raise DataError(f"{argument}: no trainer's evaluation.json in this folder (@baseline and @trainer read "
                            "the one a training run writes at its end)")
        raise DataError(f"{argument}: a folder without evaluation.json (nor final/evaluation.json); evaluate it "
                        f"first: posttrain eval --model {argument}")
    raise DataError(f"{argument}: no such evaluation file or run folder")


def read_evaluation(argument: str) -> Evaluation:
    """Read ``argument`` in any known format: a file or run folder; ``RUN@trainer`` for the trainer's own
    ``evaluation.json`` of a run that also has the harness's, ``RUN@baseline`` for the trainer's step-0 values."""
    baseline = argument.endswith("@baseline")
    trainer = baseline or argument.endswith("@trainer")
    path = locate(argument.removesuffix("@baseline").removesuffix("@trainer"), trainer=trainer)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if "format" in data or "format_version" in data:
        evaluation = _read_posttrain_eval(path, data)
    elif "method" in data and isinstance(data.get("metrics"), dict):
        evaluation = _read_trainer(path, data)
    elif "algorithm" in data and "eval_mean_return" in data:
        evaluation = _read_gym(path, data)
    else:
        raise DataError(f"{path}: not an evaluation file posttrain knows: expected the output of `posttrain eval` "
                        f"(format {FORMAT!r}), a trainer's evaluation.json (keys method, metrics) or a gym run's "
                        "(keys algorithm, eval_mean_return)")
    evaluation.label = argument
    if baseline:
        evaluation.metrics = _baseline_metrics(path, data, evaluation)
    return evaluation


def _read_posttrain_eval(path: Path, data: dict) -> Evaluation:
    if data.get("format") != FORMAT:
        raise DataError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: evaluation format version {version!r} (written by posttrain "
                        f"{data.get('posttrain_version', '?')}); this posttrain ({__version__}) reads version "
                        f"{FORMAT_VERSION}. Evaluate the model again with this version, or compare with the posttrain "
                        "that wrote the file.")
    metrics = {name: Value(m.get("value"), m.get("n", 0), m.get("stderr"), m.get("higher_is_better"))
               for name, m in data.get("metrics", {}).items()}
    samples = path.parent / data["samples"] if data.get("samples") else None
    return Evaluation(str(path), path, "posttrain eval", data.get("model"), metrics, samples, data.get("entries", {}),
                      data.get("status"))


def _read_trainer(path: Path, data: dict) -> Evaluation:
    metrics = {}
    for name, entry in data["metrics"].items():
        if not isinstance(entry, dict) or "value" not in entry:
            continue  # descriptive entries, not numbers
        n = next((v for k, v in entry.items() if k.startswith("n_") and isinstance(v, int)), 0)
        metrics[name] = Value(entry["value"], n, None, direction_of(name))
    return Evaluation(str(path), path, f"trainer ({data['method']})", data.get("model"), metrics)


def _read_gym(path: Path, data: dict) -> Evaluation:
    returns = data.get("eval_returns") or []
    mean, stderr = mean_and_standard_error(returns) if returns else (data["eval_mean_return"], None)
    metrics = {"eval_mean_return": Value(mean, len(returns), stderr, True)}
    if "mean_return_100" in data:
        metrics["mean_return_100"] = Value(data["mean_return_100"], min(100, data.get("episodes", 100)), None, True)
    return Evaluation(str(path), path, f"gym ({data['algorithm']})", data.get("env_id"), metrics)


def _baseline_metrics(path: Path, data: dict, evaluation: Evaluation) -> dict[str, Value]:
    if not isinstance(data.get("baseline"), dict):
        raise DataError(f"{path}: has no 'baseline' (step-0) values; only trainers' evaluation.json files do, when "
                        "the run evaluated at step 0")
    return {name: Value(value, evaluation.metrics[name].n if name in evaluation.metrics else 0, None,
                        direction_of(name))
            for name, value in data["baseline"].items() if isinstance(value, (int, float)) or value is None}
