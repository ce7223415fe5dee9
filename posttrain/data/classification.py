"""Labelled text for sequence classification and regression: rows -> token ids + a label.

Rows have ``text`` and ``label`` columns (names remappable), optionally ``text_pair`` (pair classification: the two
texts are joined by a newline). A label is
    single-label: a class id (int in [0, num_labels)) or a name (string), mapped to ids by ``labels``;
    regression (num_labels 1): a number;
    multi-label: a list of class ids or names (each example may have any number of them).
Without an explicit ``labels`` list, the names are the training set's distinct string labels, sorted; the mapping
(id -> name) is saved with the model. Every error names the file and row and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.data.batching import collate
from posttrain.data.sources import Row, finite_number, load_rows
from posttrain.data.tokenize import Example
from posttrain.errors import DataError


@dataclass
class LabeledExample(Example):
    label: int | float | list[float] = 0  # class id, target value, or multi-hot vector


@dataclass
class LabelColumns:
    text: str = "text"
    label: str = "label"
    text_pair: str = "text_pair"


def read_labeled_rows(path: str, split: str | None, columns: LabelColumns, need_label: bool = True) -> list[Row]:
    """The rows of ``path``, each checked to have a non-empty text (and a label, with ``need_label``)."""
    rows = load_rows(path, split)
    for row in rows:
        needed = (columns.text, columns.label) if need_label else (columns.text,)
        for column in needed:
            if column not in row.values or row.values[column] is None:
                raise DataError(f"{row.where}: missing column {column!r} (classify needs {columns.text!r} and "
                                f"{columns.label!r}; the row has {', '.join(sorted(row.values)) or 'no columns'}; "
                                "remap with data.text_column / data.label_column)")
        if not isinstance(row.values[columns.text], str) or not row.values[columns.text].strip():
            raise DataError(f"{row.where}: column {columns.text!r} must be a non-empty string")
    return rows


def infer_labels(rows: list[Row], column: str, problem_type: str) -> list[str]:
    """The class names of the training rows' string labels, sorted ([] when every label is an id or a number)."""
    if problem_type == "regression":
        return []
    names = set()
    for row in rows:
        value = row.values[column]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                names.add(item)
    return sorted(names)


def infer_num_labels(rows: list[Row], column: str, labels: list[str]) -> int:
    """Classes when the config does not say: the names' count, else the largest integer id + 1 (at least 2)."""
    if labels:
        return len(labels)
    largest = 1
    for row in rows:
        value = row.values[column]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool) or not isinstance(item, int):
                raise DataError(f"{row.where}: label {item!r} is not a class id; for regression set num_labels: 1")
            largest = max(largest, item)
    return largest + 1


def encode_label(value, where: str, problem_type: str, num_labels: int, labels: list[str]):
    """One row's label as the loss takes it: an id, a float, or a multi-hot list."""
    if problem_type == "regression":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{where}: label {value!r} must be a number (regression, num_labels: 1)")
        return finite_number(value, where, "label")  # NaN and infinities too (e.g. from Parquet)
    if problem_type == "multi_label_classification":
        if not isinstance(value, list):
            raise DataError(f"{where}: label {value!r} must be a list of classes (multi_label: true)")
        hot = [0.0] * num_labels
        for item in value:
            hot[_class_id(item, where, num_labels, labels)] = 1.0
        return hot
    return _class_id(value, where, num_labels, labels)


def _class_id(value, where: str, num_labels: int, labels: list[str]) -> int:
    if isinstance(value, str):
        if value not in labels:
            raise DataError(f"{where}: unknown label {value!r}; known labels: {', '.join(labels) or 'none (ids only)'}")
        return labels.index(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: label {value!r} must be a class id (an integer) or a class name (a string)")
    if not 0 <= value < num_labels:
        raise DataError(f"{where}: label {value} is outside the classes 0-{num_labels - 1} (num_labels {num_labels})")
    return value


def encode_text(tokenizer, text: str, text_pair: str | None, max_length: int) -> list[int]:
    """Token ids of the text (newline, the pair), ending with EOS (the token ``last`` pooling reads), truncated from
    the left of the text so the end survives."""
    ids = tokenizer(text if text_pair is None else f"{text}\n{text_pair}", add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != tokenizer.pad_token_id:
        ids = ids + [tokenizer.eos_token_id]
    cls = getattr(tokenizer, "cls_token_id", None)
    if len(ids) > max_length > 1 and cls is not None and ids[0] == cls:  # an encoder's [CLS] (first pooling) stays
        return ids[:1] + ids[-(max_length - 1):]
    return ids[-max_length:]


def tokenize_labeled(rows: list[Row], tokenizer, columns: LabelColumns, max_length: int, problem_type: str,
                     num_labels: int, labels: list[str], with_labels: bool = True) -> list[LabeledExample]:
    examples = []
    for row in rows:
        pair = row.values.get(columns.text_pair)
        if pair is not None and not isinstance(pair, str):
            raise DataError(f"{row.where}: column {columns.text_pair!r} must be a string")
        ids = encode_text(tokenizer, row.values[columns.text], pair, max_length)
        label = encode_label(row.values[columns.label], row.where, problem_type, num_labels, labels) \
            if with_labels else 0
        examples.append(LabeledExample(ids, [0] * len(ids), row.where, label))
    return examples


def collate_labeled(examples: list[LabeledExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` and ``labels``: ``(B,)`` long ids, ``(B,)`` float targets or
    ``(B, K)`` float multi-hot."""
    batch = collate(examples, pad_token_id)
    del batch["loss_mask"]
    first = examples[0].label
    dtype = torch.long if isinstance(first, int) else torch.float32
    batch["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)
    return batch
