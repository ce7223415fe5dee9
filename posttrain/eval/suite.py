"""Suites: named lists of metric entries. Built in: ``default``, ``quick`` and ``safety``; or a YAML/JSON file:

    name: my-suite                      # optional; defaults to the file's name
    metrics:
      - perplexity                      # a metric with its default options
      - metric: task_accuracy           # a metric with options
        name: word_problems             # the name its values are stored under (default: the metric's name)
        task: word_problems
        n: 100
        samples: 8
        pass_at: [1, 8]
      - {metric: reward, rewards: [{model: runs/reward/final}]}

Every entry is checked when the suite is read, before any model is loaded: an unknown metric, an unknown option or a
value of the wrong type is a ConfigError naming the entry and listing what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config import build_config, read_config_file
from posttrain.errors import ConfigError
from posttrain.eval.metrics import METRICS
from posttrain.eval.result import MetricResult
from posttrain.models.specs import EMBEDDED_DEFAULT

# No reward model ships with posttrain, so the built-in suites reward answers that respect a word limit: the stated
# one, else 100 words (the verbosity task's length reward). Point `rewards` at your own reward model or function.
LENGTH_REWARD = [{"name": "verbosity", "options": {"limit": 100}}]

BUILTIN_SUITES: dict[str, list] = {
    # sized to run in minutes on a CPU with the embedded 135M model (its time: docs/eval.md)
    "default": [
        {"metric": "perplexity", "limit": 48},
        "verbosity",
        {"metric": "reward", "rewards": LENGTH_REWARD},
        {"metric": "task_accuracy", "name": "arithmetic", "task": "arithmetic", "n": 24, "samples": 4,
         "pass_at": [1, 4], "max_new_tokens": 32},
        # the concise constitution's checkers on the same greedy answers (one generation serves both)
        {"metric": "constitution", "n": 24, "max_new_tokens": 32},
        "kl",
        "win_rate",
        {"metric": "preference_accuracy", "limit": 32},
        {"metric": "probes", "rewards": LENGTH_REWARD},
        {"metric": "safety", "limit": 40, "max_new_tokens": 32},  # 20 held-out twin pairs; all: the `safety` suite
    ],
    # every metric on a handful of items: a smoke test in seconds (win_rate's judge is the embedded model, as in
    # `default`; tests that evaluate a model with a known base give it `judge: {llm: tiny}`)
    "quick": [
        {"metric": "perplexity", "limit": 8},
        {"metric": "verbosity", "limit": 8, "max_new_tokens": 16},
        {"metric": "reward", "rewards": LENGTH_REWARD, "limit": 8, "max_new_tokens": 16},
        {"metric": "task_accuracy", "name": "arithmetic", "n": 4, "samples": 2, "pass_at": [1, 2],
         "max_new_tokens": 8},
        {"metric": "constitution", "n": 4, "max_new_tokens": 8},
        {"metric": "kl", "limit": 4, "max_new_tokens": 16},
        {"metric": "win_rate", "limit": 4, "max_new_tokens": 16},
        {"metric": "preference_accuracy", "limit": 8},
        {"metric": "probes", "rewards": LENGTH_REWARD, "max_new_tokens": 16},
        {"metric": "safety", "limit": 4, "max_new_tokens": 8},
    ],
    # refusal of the held-out harmful prompts and over-refusal of their benign twins (data/safety), the benign
    # answers' helpfulness by the embedded model as a pointwise judge, and the arithmetic accuracy a safety
    # fine-tune must not cost
    "safety": [
        {"metric": "safety", "helpfulness_judge": {"pointwise": EMBEDDED_DEFAULT, "criterion": "helpful"}},
        {"metric": "task_accuracy", "name": "arithmetic", "task": "arithmetic", "n": 40, "max_new_tokens": 32},
    ],
}


@dataclass
class SuiteEntry:
    name: str
    metric: str
    options: Any  # the metric's options dataclass

    def run(self, context) -> MetricResult:
        return METRICS[self.metric][1](context, self.options)

    def to_dict(self) -> dict:
        return {"name": self.name, "metric": self.metric, **dataclasses.asdict(self.options)}


@dataclass
class Suite:
    name: str
    source: str  # "built-in", a file path, or "python"
    entries: list[SuiteEntry]

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "entries": [e.to_dict() for e in self.entries]}


def load_suite(suite: str | Path | list | Suite) -> Suite:
    """A built-in suite's name, a YAML/JSON suite file, or a list of entries (Python)."""
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, list):
        return build_suite("custom", "python", suite)
    if str(suite) in BUILTIN_SUITES:
        return build_suite(str(suite), "built-in", BUILTIN_SUITES[str(suite)])
    path = Path(suite)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(f"unknown suite {str(suite)!r}: built-in suites are {', '.join(BUILTIN_SUITES)}; "
                          "or give a .yaml/.json suite file")
    data = read_config_file(path)
    unknown = sorted(set(data) - {"name", "metrics"})
    if unknown or not isinstance(data.get("metrics"), list):
        raise ConfigError(f"suite file {path}: expected the keys 'metrics' (a list of entries) and optionally "
                          f"'name'{'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    return build_suite(str(data.get("name", path.stem)), str(path), data["metrics"])


def build_suite(name: str, source: str, raw_entries: list) -> Suite:
    entries = [build_entry(raw, f"suite {source}, entry {i + 1}") for i, raw in enumerate(raw_entries)]
    if not entries:
        raise ConfigError(f"suite {source}: no metrics")
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(f"suite {source}: two entries are named {entry.name!r}; give one a different `name:`")
        seen.add(entry.name)
    return Suite(name, source, entries)


def build_entry(raw, where: str) -> SuiteEntry:
    """One entry (a metric name, or a mapping with ``metric``, an optional ``name`` and the metric's options)."""
    if isinstance(raw, str):
        raw = {"metric": raw}
    if not isinstance(raw, dict) or "metric" not in raw:
        raise ConfigError(f"{where}: expected a metric name or a mapping with a 'metric' key, got {raw!r}")
    options = {k: v for k, v in raw.items() if k not in ("metric", "name")}
    metric = raw["metric"]
    if metric not in METRICS:
        raise ConfigError(f"{where}: unknown metric {metric!r}; available metrics: {', '.join(METRICS)}")
    options_class = METRICS[metric][0]
    required = [f.name for f in dataclasses.fields(options_class)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in options]
    if missing:
        raise ConfigError(f"{where}: metric {metric!r} needs the option {', '.join(map(repr, missing))}")
    name = raw.get("name", metric)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{where}: name must be a non-empty string without '/', got {name!r}")
    try:
        typed = build_config(options_class, options, source=where)
    except ConfigError as exc:  # checks in the options' __post_init__ do not know the entry: name it
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None
    return SuiteEntry(name, metric, typed)
