"""Typed configs from YAML/JSON files, dicts and ``key=value`` overrides.

Every method's config is a dataclass whose fields are declared with ``option``: a default, a one-line help, an
optional range (``min``/``max``) and old spellings (``aliases``). ``build_config`` builds the dataclass from a dict
(``read_config_file`` + ``apply_overrides``: dotted keys such as ``lora.r=8`` reach into sections), checking every key
and value: an unknown key names the closest valid one; a value of the wrong type or out of range names the key, the
value and what was expected. ``describe_config`` prints every key with its type, default and help (``posttrain train
CONFIG --help``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
import textwrap
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Union

from posttrain.errors import ConfigError

log = logging.getLogger(__name__)

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, *, help: str, min: float | None = None, max: float | None = None,
           above: float | None = None, aliases: tuple[str, ...] = (), default_factory: Any = MISSING):
    """A config field: ``dataclasses.field`` with its help (shown by ``describe_config``), its range (``min`` <= value
    <= ``max``, value > ``above``; checked by ``build_config``) and deprecated spellings that ``build_config`` still
    accepts, with a warning."""
    metadata = {"help": help, "min": min, "max": max, "above": above, "aliases": tuple(aliases)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


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
    """Build dataclass ``cls`` from ``data``, validating keys, types and ranges. A deprecated spelling of a key (an
    ``option`` alias) sets its field, with a warning; giving both spellings is an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    aliases = _aliases(fields.values())
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        if name != key:
            _warn_deprecated(source, f"{prefix}{key}", f"{prefix}{name}", both=name in data)
        kwargs[name] = _coerce(value, hints[name], fields[name], source, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(config) -> dict:
    """The config as plain data (sections as nested dicts), every key under its current name."""
    return dataclasses.asdict(config)


def _aliases(fields) -> dict[str, str]:
    """old spelling -> field name"""
    return {old: f.name for f in fields for old in f.metadata.get("aliases", ())}


def _warn_deprecated(source: str, old: str, new: str, both: bool) -> None:
    if both:
        raise ConfigError(f"{source}: both '{old}' and '{new}' are set; '{old}' is the deprecated spelling of "
                          f"'{new}': keep only '{new}'")
    message = f"{source}: '{old}' is deprecated; use '{new}'"
    warnings.warn(message, FutureWarning, stacklevel=3)
    log.warning(message)


# ----------------------------------------------------------------------------------------------- coercion
class OutOfRangeError(ConfigError):
    pass


def _coerce(value: Any, annotation: Any, field: dataclasses.Field | None, source: str, key: str):
    """``value`` checked (and converted where lossless) against ``annotation``; a ConfigError names the key."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, annotation, field, source, key)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            _fail(value, annotation, source, key)
        return value
    if dataclasses.is_dataclass(annotation):
        if value is None:
            _fail(value, annotation, source, key)
        return build_config(annotation, value, source, prefix=f"{key}.")
    if origin in (list, tuple, dict):
        return _coerce_collection(value, annotation, source, key)
    if annotation in _SCALARS:
        return _SCALARS[annotation](value, field, source, key)
    raise ConfigError(f"{source}: key {key!r}: unsupported annotation {annotation!r}")  # a bug in a config class


def _fail(value: Any, annotation: Any, source: str, key: str, what: str = ""):
    raise ConfigError(f"{source}: key {key!r} has value {value!r}, expected {what or _type_name(annotation)}")


def _coerce_union(value, annotation, field, source: str, key: str):
    options = typing.get_args(annotation)
    if value is None:
        if type(None) in options:
            return None
        _fail(value, annotation, source, key)
    for option_type in options:
        if option_type is type(None):
            continue
        try:
            return _coerce(value, option_type, field, source, key)
        except OutOfRangeError:
            raise  # the right type, outside its range: that message, not "expected an integer or null"
        except ConfigError:
            continue
    _fail(value, annotation, source, key)


def _coerce_collection(value, annotation, source: str, key: str):
    origin = typing.get_origin(annotation)
    if origin is dict:
        if not isinstance(value, dict):
            _fail(value, annotation, source, key)
        _key_type, value_type = typing.get_args(annotation) or (str, Any)
        return {str(k): _coerce(v, value_type, None, source, f"{key}.{k}") for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        _fail(value, annotation, source, key)
    (item_type, *_rest) = typing.get_args(annotation) or (Any,)
    items = [_coerce(v, item_type, None, source, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_bool(value, field, source: str, key: str):
    if not isinstance(value, bool):
        _fail(value, bool, source, key, "true or false")
    return value


def _coerce_int(value, field, source: str, key: str):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(value, int, source, key, "an integer")
    _check_range(value, field, source, key)
    return value


def _coerce_float(value, field, source: str, key: str):
    if isinstance(value, str) and _FLOAT_WITHOUT_DOT.fullmatch(value.strip()):
        value = float(value)  # PyYAML (YAML 1.1) reads 2e-5 as a string: only 2.0e-5 is a float to it
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(value, float, source, key, "a number")
    _check_range(float(value), field, source, key)
    return float(value)


def _coerce_str(value, field, source: str, key: str):
    if not isinstance(value, str):
        _fail(value, str, source, key, "a string")
    return value


_SCALARS = {Any: lambda value, *_: value, bool: _coerce_bool, int: _coerce_int, float: _coerce_float,
            str: _coerce_str}
_FLOAT_WITHOUT_DOT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _check_range(value: float, field: dataclasses.Field | None, source: str, key: str) -> None:
    if field is None:
        return
    low, high, above = (field.metadata.get(name) for name in ("min", "max", "above"))
    if ((low is not None and value < low) or (high is not None and value > high)
            or (above is not None and value <= above)):
        raise OutOfRangeError(f"{source}: key {key!r} has value {value!r}, expected a value {_bounds(field)}")


def _bounds(field: dataclasses.Field) -> str:
    """``">= 0 and <= 1"``, ``"> 0"``: a field's range in words ("" without one)."""
    low, high, above = (field.metadata.get(name) for name in ("min", "max", "above"))
    parts = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
             f"<= {high}" if high is not None else ""]
    return " and ".join(part for part in parts if part)


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


# ----------------------------------------------------------------------------------------------- description
def describe_config(cls: type, values: dict | None = None, source: str = "config", width: int = 120) -> str:
    """Every key of config class ``cls``, one entry per key::

          group_size: int (>= 1), default 8; configs/grpo.yaml sets 4
              G: completions sampled per prompt

    grouped by the class that declares it (the engine's keys, the model's, each section's as dotted keys, the
    method's own). Where ``values`` (a config file's dict, as ``read_config_file`` returns it) sets a key to
    something other than its default, that value follows (``source`` names the file). Types and values are written
    as in YAML: null is Python's None."""
    groups: dict[str, list[str]] = {}
    unknown = _describe_fields(cls, cls, values or {}, source, "", width, groups)
    lines = [f"Keys of {cls.__name__}: type (range), default, and what the key means. Values as in YAML (null is "
             "None)."]
    if values is not None:
        lines += textwrap.wrap(f"'{source} sets X': the value that {source} gives a key, where it is not the default.",
                               width)
    for title, entries in groups.items():
        lines += ["", *textwrap.wrap(title, width, subsequent_indent="  "), *entries]
    if unknown:
        lines += ["", *textwrap.wrap(f"{source} also sets keys {cls.__name__} does not have: {', '.join(unknown)}",
                                     width)]
    return "\n".join(lines) + "\n"


def _describe_fields(cls: type, top: type, values: dict, source: str, prefix: str, width: int,
                     groups: dict[str, list[str]], section: str | None = None) -> list[str]:
    """Add ``cls``'s keys to ``groups`` (title -> lines), under ``section`` when ``cls`` is a section; returns the
    keys of ``values`` that it does not have."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = {f.name for f in fields} | set(_aliases(fields))
    unknown = [f"{prefix}{key}" for key in values if key not in known]
    for f in fields:
        given = [values[name] for name in (f.name, *f.metadata.get("aliases", ())) if name in values]
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            title = f"{prefix}{f.name} ({annotation.__name__}): {f.metadata.get('help', '')}"
            section_values = given[0] if given and isinstance(given[0], dict) else {}
            unknown += _describe_fields(annotation, top, section_values, source, f"{prefix}{f.name}.", width, groups,
                                        title)
            continue
        title = section or _group_title(_declaring_class(cls, f.name), top)
        groups.setdefault(title, []).append(_describe_field(f, annotation, given, source, prefix, width))
    return unknown


def _describe_field(f: dataclasses.Field, annotation: Any, given: list, source: str, prefix: str, width: int) -> str:
    default = f.default if f.default is not MISSING else (
        f.default_factory() if f.default_factory is not MISSING else MISSING)
    line = f"  {prefix}{f.name}: {_type_label(annotation)}{_range_label(f)}"
    line += ", required" if default is MISSING else f", default {_yaml(default)}"
    if given:
        try:
            value = _coerce(given[0], annotation, None, source, f"{prefix}{f.name}")
        except ConfigError:
            value = given[0]
        if default is MISSING or value != default:
            line += f"; {source} sets {_yaml(value)}"
    if f.metadata.get("aliases"):
        line += f"; formerly {', '.join(f.metadata['aliases'])}"
    indent = " " * 6
    help_text = textwrap.fill(f.metadata.get("help") or "(no help)", width, initial_indent=indent,
                              subsequent_indent=indent, break_on_hyphens=False)
    return f"{textwrap.fill(line, width, subsequent_indent=' ' * 8, break_on_hyphens=False)}\n{help_text}"


def _declaring_class(cls: type, name: str) -> type:
    """The base-most class of ``cls`` that declares field ``name`` (a subclass may change its default and help)."""
    return next(klass for klass in reversed(cls.__mro__) if name in vars(klass).get("__annotations__", {}))


def _group_title(klass: type, top: type) -> str:
    """The first line of the class's docstring; a config class without one is the method's own part."""
    doc = klass.__doc__ or ""
    if doc.startswith(f"{klass.__name__}("):  # the signature dataclasses writes when the class has no docstring
        return f"Method-specific ({klass.__name__})" if klass is top else klass.__name__
    return f"{doc.strip().splitlines()[0].rstrip('.')} ({klass.__name__})"


def _type_label(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_label(a) for a in args)
    if origin is Literal:
        return " | ".join(_yaml(v) for v in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_label(a) for a in args)}]" if args else origin.__name__
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _range_label(f: dataclasses.Field) -> str:
    bounds = _bounds(f)
    return f" ({bounds})" if bounds else ""


def _yaml(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
