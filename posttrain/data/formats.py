"""Dataset formats and column remapping (the conventions TRL users already have).

| format            | columns                          | used by            |
|-------------------|----------------------------------|--------------------|
| text              | text                             | SFT (all tokens)   |
| prompt_completion | prompt, completion               | SFT                |
| messages          | messages (list of role/content)  | SFT (chat)         |
| preference        | prompt, chosen, rejected         | DPO, reward models |
| unpaired          | prompt, completion, label        | KTO                |

``prompt``/``completion``/``chosen``/``rejected`` may be plain strings or message lists (conversational form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.data.sources import Row
from posttrain.errors import DataError

FORMAT_COLUMNS = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}
CANONICAL_COLUMNS = ("text", "prompt", "completion", "messages", "chosen", "rejected", "label", "margin")


@dataclass
class DataConfig:
    path: str | None = None  # file (.jsonl/.json/.csv/.parquet), load_from_disk folder, or hub id
    split: str | None = None  # e.g. train, train[:1000], train[10%:]; for files only the slice applies
    eval_path: str | None = None  # defaults to `path` when only eval_split is given
    eval_split: str | None = None
    format: Literal["auto", "text", "prompt_completion", "messages", "preference", "unpaired"] = "auto"
    # Column remapping: the name of the column in your data that holds each canonical field.
    text_column: str = "text"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    label_column: str = "label"
    max_length: int = field(default=1024, metadata={"min": 2})
    max_prompt_length: int | None = field(default=None, metadata={"min": 1})  # longer prompts keep their last tokens
    max_completion_length: int | None = field(default=None, metadata={"min": 1})  # preference/unpaired completions
    apply_chat_template: bool | None = None  # None: when the tokenizer has a template and the data has a prompt
    completion_only_loss: bool = True  # prompt tokens carry no loss
    packing: bool = False  # concatenate examples into max_length rows (attention stays within each example)

    def column_map(self) -> dict[str, str]:
        """canonical name -> column name in the data"""
        return {name: getattr(self, f"{name}_column", name) for name in CANONICAL_COLUMNS}


def normalize_rows(rows: list[Row], config: DataConfig, accepted: tuple[str, ...]) -> tuple[str, list[Row]]:
    """Rename columns to canonical names, detect the format (one of ``accepted``) and check every row has it.

    Returns the format and rows whose ``values`` hold only canonical columns.
    """
    columns = config.column_map()
    renamed = [Row({c: r.values[src] for c, src in columns.items() if src in r.values}, r.where) for r in rows]
    fmt = config.format if config.format != "auto" else _detect(renamed[0], accepted, columns, rows[0])
    if fmt not in accepted:
        raise DataError(f"format {fmt!r} cannot be used here: expected one of {', '.join(accepted)}")
    for row in renamed:
        for column in FORMAT_COLUMNS[fmt]:
            if column not in row.values:
                raise DataError(
                    f"{row.where}: missing column {columns[column]!r} (needed by the {fmt} format; "
                    f"the row has {', '.join(sorted(rows[0].values)) or 'no columns'}; remap with {column}_column)"
                )
            value = row.values[column]
            if column == "label":
                if not isinstance(value, bool) and value not in (0, 1, "true", "false", "True", "False"):
                    raise DataError(f"{row.where}: column {columns[column]!r} must be true/false, got {value!r}")
            elif not _is_text_or_messages(value):
                raise DataError(
                    f"{row.where}: column {columns[column]!r} must be a string or a list of "
                    f"{{role, content}} messages, got {type(value).__name__}"
                )
            elif column != "prompt" and _is_empty(value):
                raise DataError(f"{row.where}: column {columns[column]!r} is empty")
    return fmt, renamed


def _detect(first: Row, accepted: tuple[str, ...], columns: dict, raw_first: Row) -> str:
    for fmt in accepted:
        if all(c in first.values for c in FORMAT_COLUMNS[fmt]):
            return fmt
    wanted = " or ".join("(" + ", ".join(columns[c] for c in FORMAT_COLUMNS[f]) + ")" for f in accepted)
    raise DataError(
        f"{raw_first.where}: cannot tell the dataset format: the row has columns "
        f"{', '.join(sorted(raw_first.values)) or '(none)'}; expected {wanted} (remap names with e.g. prompt_column)"
    )


def _is_text_or_messages(value) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not value or all(not str(m["content"]).strip() for m in value)
