"""Data: sources, formats and column remapping, tokenization with loss masks, batching and packing."""

from posttrain.data.batching import (
    collate,
    collate_sequences,
    count_real_tokens,
    pack_examples,
    split_micro_batches,
    step_batches,
)
from posttrain.data.examples import load_examples
from posttrain.data.formats import FORMAT_COLUMNS, DataConfig, normalize_rows
from posttrain.data.sources import Row, load_rows, parse_split
from posttrain.data.tokenize import Example, TruncationStats, encode_messages, encode_prompt_completion, tokenize_sft

__all__ = [
    "FORMAT_COLUMNS",
    "DataConfig",
    "Example",
    "Row",
    "TruncationStats",
    "collate",
    "collate_sequences",
    "count_real_tokens",
    "encode_messages",
    "encode_prompt_completion",
    "load_examples",
    "load_rows",
    "normalize_rows",
    "pack_examples",
    "parse_split",
    "split_micro_batches",
    "step_batches",
    "tokenize_sft",
]
