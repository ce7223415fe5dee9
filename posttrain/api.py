"""The Python API behind the CLI: ``posttrain.train("configs/sft.yaml", overrides=["max_steps=20"])``."""

from __future__ import annotations

from pathlib import Path

from posttrain.config import apply_overrides, build_config, describe_config, read_config_file
from posttrain.errors import ConfigError


def build_method_config(config: str | Path | dict, overrides: list[str] | None = None):
    """A config file path or dict (+ overrides) -> ``(train_function, typed config)``, dispatched on ``method``."""
    source, data = _read(config, overrides)
    config_class, train_function = _method(data.get("method", "sft"), source)
    return train_function, build_config(config_class, data, source=source)


def describe_method(config: str | Path | dict | None = None, overrides: list[str] | None = None,
                    method: str | None = None) -> str:
    """Every key of a method's config: type, default, help, and the value ``config`` (+ overrides) sets where it
    differs from the default (``posttrain train CONFIG --help``). The method is ``method``, else the config's."""
    source, data = _read(config, overrides) if config is not None else ("config", None)
    config_class, _ = _method(method or (data or {}).get("method", "sft"), "method" if method else source)
    return describe_config(config_class, data, source=source)


def _read(config: str | Path | dict, overrides: list[str] | None) -> tuple[str, dict]:
    source = "config" if isinstance(config, dict) else str(config)
    data = dict(config) if isinstance(config, dict) else read_config_file(config)
    return source, apply_overrides(data, overrides or [], source=f"{source} (overrides)")


def _method(method: str, source: str):
    """``(config class, train function)`` of ``method``."""
    from posttrain.trainers import METHODS

    if method not in METHODS:
        raise ConfigError(f"{source}: unknown method {method!r}; available: {', '.join(METHODS)}")
    return METHODS[method]


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
