"""Typed configs from YAML/JSON files, dicts and ``key=value`` overrides.

Every method's config is a dataclass. ``load_config`` reads a file, applies dotted overrides (``lora.r=8``), and
builds the dataclass, checking every key and value: an unknown key names the closest valid one; a value of the wrong
type or out of range names the key, the value and what was expected. Range limits live in field metadata
(``field(default=..., metadata={"min": 0})``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from posttrain.errors import ConfigError


def read_config_file(path: str | Path) -> dict:
    """Read a ``.yaml``/``.yml``/``.json`` config into a dict; syntax errors name the file and line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: expected a .yaml, .yml or .json file")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str], source: str = "command line") -> dict:
    """Apply ``key=value`` overrides; dotted keys reach into sections; values are parsed as YAML scalars/lists."""
    import yaml

    data = json.loads(json.dumps(data))  # deep copy, plain types only
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        target = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
            target = node
        target[parts[-1]] = value
    return data


def build_config(cls: type, data: dict, source: str = "config", prefix: str = ""):
    """Build dataclass ``cls`` from ``data``, validating keys, types and ranges."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], fields[key], source, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None):
    """File (optional) + dict (optional) + overrides -> a validated ``cls`` instance."""
    merged = read_config_file(path) if path else {}
    merged.update(data or {})
    merged = apply_overrides(merged, overrides or [])
    return build_config(cls, merged, source=str(path) if path else "config")


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _coerce(value: Any, annotation: Any, field: dataclasses.Field | None, source: str, key: str):
    expected = _type_name(annotation)

    def fail(what: str = ""):
        raise ConfigError(f"{source}: key {key!r} has value {value!r}, expected {what or expected}")

    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None:
            if type(None) in options:
                return None
            fail()
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, field, source, key)
            except ConfigError:
                continue
        fail()
    if origin is Literal:
        if value not in typing.get_args(annotation):
            fail("one of " + ", ".join(repr(v) for v in typing.get_args(annotation)))
        return value
    if dataclasses.is_dataclass(annotation):
        if value is None:
            fail()
        return build_config(annotation, value, source, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        items = [_coerce(v, item_type, None, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        _key_type, value_type = typing.get_args(annotation) or (str, Any)
        return {str(k): _coerce(v, value_type, None, source, f"{key}.{k}") for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        _check_range(value, field, source, key)
        return value
    if annotation is float:
        if isinstance(value, str) and _FLOAT_WITHOUT_DOT.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads 2e-5 as a string: only 2.0e-5 is a float to it
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        _check_range(float(value), field, source, key)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    raise ConfigError(f"{source}: key {key!r}: unsupported annotation {annotation!r}")  # a bug in a config class


_FLOAT_WITHOUT_DOT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _check_range(value: float, field: dataclasses.Field | None, source: str, key: str) -> None:
    if field is None:
        return
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'>= ' + str(low) if low is not None else ''}{' and ' if low is not None and high is not None else ''}"
        bounds += f"{'<= ' + str(high) if high is not None else ''}"
        raise ConfigError(f"{source}: key {key!r} has value {value!r}, expected a value {bounds}")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(annotation):
        return f"a {annotation.__name__} section"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )
