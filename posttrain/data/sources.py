"""Read rows from JSONL, JSON, CSV, Parquet, ``datasets.load_from_disk`` folders or hub ids, with split slices.

Every row keeps its provenance (``file:line`` or ``source[row]``) so that later errors can point at it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import DataError

_SPLIT = re.compile(r"^(?P<name>[\w.\-]*)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


@dataclass
class Row:
    values: dict
    where: str  # e.g. "data/train.jsonl:17"


def load_rows(path: str, split: str | None = None) -> list[Row]:
    """All rows of ``path`` (restricted by ``split``, e.g. ``train[:1000]`` or ``train[10%:]``).

    For single files the split's name is ignored and only its slice applies; for ``load_from_disk`` folders and hub
    datasets the name selects the split (default ``train``).
    """
    name, sl = parse_split(split)
    source = Path(path)
    if source.is_file():
        rows = _read_file(source)
    elif source.is_dir():
        rows = _read_dataset(path, name or "train", from_disk=True)
    elif path.startswith((".", "/", "~")) or source.suffix in (".jsonl", ".json", ".csv", ".parquet"):
        raise DataError(f"data file {path} does not exist")
    else:
        rows = _read_dataset(path, name or "train", from_disk=False)
    rows = rows[sl]
    if not rows:
        raise DataError(f"dataset {path} (split {split or 'all'}) is empty: expected at least one row")
    return rows


def finite_number(value, where: str, column: str) -> float:
    """A row's numeric field as a float; text that is no number, NaN and infinities are refused with the row."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {column!r} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise DataError(f"{where}: column {column!r} must be a finite number, got {value!r}")
    return number


def parse_split(split: str | None) -> tuple[str, slice]:
    """``"train[10:20]"`` -> ("train", slice(10, 20)); percentages become fractions resolved by ``_Slice``."""
    if not split:
        return "", slice(None)
    match = _SPLIT.match(split.strip())
    if not match:
        raise DataError(f"split {split!r}: expected a name with an optional slice, like train, train[:100] or train[10%:]")
    return match["name"], _Slice(match["start"], match["stop"])


class _Slice:
    """A slice whose bounds may be percentages of the dataset length; used as ``rows[_Slice(...)]`` via __index__."""

    def __init__(self, start: str | None, stop: str | None):
        self.start, self.stop = start, stop

    def resolve(self, n: int) -> slice:
        def bound(text):
            if text is None:
                return None
            if text.endswith("%"):
                return round(n * int(text[:-1]) / 100)
            return int(text)

        return slice(bound(self.start), bound(self.stop))


class _SliceableRows(list):
    def __getitem__(self, item):
        if isinstance(item, _Slice):
            item = item.resolve(len(self))
        return super().__getitem__(item)


def _read_file(path: Path) -> _SliceableRows:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            values = _parse_json(line, path, number)
            if not isinstance(values, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(values).__name__}")
            rows.append(Row(values, f"{path}:{number}"))
        return _SliceableRows(rows)
    if suffix == ".json":
        data = _parse_json(_read_text(path), path)
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]} or {"train": [...]}
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects (or one key holding such a list)")
        return _SliceableRows(Row(r, f"{path}[{i}]") for i, r in enumerate(data))
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), restkey=_EXTRA_FIELDS)
        rows = []
        for values in reader:
            where = f"{path}:{reader.line_num}"
            if _EXTRA_FIELDS in values:
                raise DataError(f"{where}: {len(reader.fieldnames) + len(values[_EXTRA_FIELDS])} fields, but the "
                                f"header names {len(reader.fieldnames)} (quote cells that hold commas)")
            rows.append(Row(values, where))
        return _SliceableRows(rows)
    if suffix == ".parquet":
        import datasets

        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(max(path.stat().st_size - 4, 0))
            tail = handle.read(4)
        if head != b"PAR1" or tail != b"PAR1":
            raise DataError(f"{path}: not a Parquet file (no PAR1 marker at its start and end)")
        table = datasets.Dataset.from_parquet(str(path))
        return _SliceableRows(Row(r, f"{path}[{i}]") for i, r in enumerate(table))
    raise DataError(f"data file {path}: unsupported extension {suffix!r}; expected .jsonl, .json, .csv or .parquet")


_EXTRA_FIELDS = " extra fields"  # where csv.DictReader puts the cells of a row longer than the header


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; a byte-order mark at the start is accepted (as pandas and datasets do)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") \
            from None


def _parse_json(text: str, path: Path, line: int | None = None):
    """JSON without NaN or Infinity (Python's json reads them; no loss or metric can use them). ``line``: the file's
    line that ``text`` is (JSONL); None: ``text`` is the whole file."""
    where = f"{path}:{line}" if line is not None else str(path)

    def refuse(constant):
        raise DataError(f"{where}: {constant} is not a finite number")

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{line or exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def _read_dataset(path: str, split: str, from_disk: bool) -> _SliceableRows:
    import datasets

    try:
        if from_disk:
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"dataset folder {path}: no split {split!r}; it has {', '.join(loaded)}")
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(path, split=split)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types for missing/offline datasets
        kind = "dataset folder" if from_disk else "dataset"
        raise DataError(
            f"{kind} {path!r} (split {split!r}) could not be loaded: not a local file or folder, and the hub is "
            f"unreachable or has no such dataset ({type(exc).__name__}: {exc})"
        ) from None
    return _SliceableRows(Row(r, f"{path}[{i}]") for i, r in enumerate(loaded))
