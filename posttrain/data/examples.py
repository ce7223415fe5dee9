"""One loader for every method: a data section -> tokenized train and eval examples.

``load_examples(data, tokenizer, kind)`` reads ``data.path`` (and ``data.eval_path`` / ``data.eval_split`` for the
eval set, empty when neither is set), checks the rows are in a format the kind accepts, and tokenizes them with
completion masks. Kinds: ``sft`` (text, prompt/completion, messages), ``pairs`` (prompt/chosen/rejected: DPO family,
reward models), ``unpaired`` (prompt/completion/label, or pairs split in two: KTO).
"""

from __future__ import annotations

import logging
from typing import Literal

from posttrain.data.formats import DataConfig, normalize_rows
from posttrain.data.preference import tokenize_pairs, tokenize_unpaired
from posttrain.data.sources import load_rows
from posttrain.data.tokenize import tokenize_sft
from posttrain.errors import ConfigError

log = logging.getLogger(__name__)

ExampleKind = Literal["sft", "pairs", "unpaired"]

# kind -> (accepted formats, tokenizer function (rows, fmt, tokenizer, data) -> (examples, stats), what data.path holds)
EXAMPLE_KINDS = {
    "sft": (("messages", "prompt_completion", "text"), tokenize_sft,
            "a .jsonl/.json/.csv/.parquet file, a dataset folder or a hub id"),
    "pairs": (("preference",), lambda rows, fmt, tokenizer, data: tokenize_pairs(rows, tokenizer, data),
              "preference rows with prompt, chosen and rejected columns"),
    "unpaired": (("unpaired", "preference"), tokenize_unpaired,
                 "rows with prompt, completion and label (or prompt, chosen, rejected)"),
}


def load_examples(data: DataConfig, tokenizer, kind: ExampleKind) -> tuple[list, list]:
    """``(train_examples, eval_examples)`` of ``kind``; the truncation report of each is logged."""
    accepted, tokenize, expected = EXAMPLE_KINDS[kind]
    if not data.path:
        raise ConfigError(f"data.path is required: {expected}")

    def tokenized(path: str, split: str | None, name: str) -> list:
        fmt, rows = normalize_rows(load_rows(path, split), data, accepted)
        examples, stats = tokenize(rows, fmt, tokenizer, data)
        log.warning(stats.report(name))
        return examples

    train = tokenized(data.path, data.split, "train")
    held_out = tokenized(data.eval_path or data.path, data.eval_split, "eval") if (data.eval_path or data.eval_split) \
        else []
    return train, held_out
