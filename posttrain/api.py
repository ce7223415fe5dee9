"""The Python API behind the CLI: ``posttrain.train("configs/sft.yaml", overrides=["max_steps=20"])``."""

from __future__ import annotations

from pathlib import Path

from posttrain.config import apply_overrides, build_config, read_config_file
from posttrain.errors import ConfigError


def build_method_config(config: str | Path | dict, overrides: list[str] | None = None):
    """A config file path or dict (+ overrides) -> ``(train_function, typed config)``, dispatched on ``method``."""
    from posttrain.trainers import METHODS

    source = "config" if isinstance(config, dict) else str(config)
    data = dict(config) if isinstance(config, dict) else read_config_file(config)
    data = apply_overrides(data, overrides or [], source=f"{source} (overrides)")
    method = data.get("method", "sft")
    if method not in METHODS:
        raise ConfigError(f"{source}: unknown method {method!r}; available: {', '.join(METHODS)}")
    config_class, train_function = METHODS[method]
    return train_function, build_config(config_class, data, source=source)


def train(config: str | Path | dict, overrides: list[str] | None = None, callbacks=None) -> dict:
    """Train from a config file or dict; returns the evaluation written to ``output_dir/evaluation.json``."""
    train_function, typed = build_method_config(config, overrides)
    return train_function(typed, callbacks=callbacks)


def evaluate(model="smollm2-135m-instruct", suite="default", seed: int = 0, out: str | Path | None = None,
             **options) -> dict:
    """Evaluate a model spec (or a ``(model, tokenizer)`` pair) on a metric suite; returns the evaluation, also
    written to ``out`` (default ``<model folder>/evaluation.json`` for a folder). See ``posttrain.eval.evaluate``."""
    from posttrain.eval import evaluate as run_suite

    return run_suite(model, suite, seed, out, **options)
