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

from dataclasses import dataclass
from typing import Literal

from posttrain.config import option
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
    path: str | None = option(None, help="the training data: a .jsonl/.json/.csv/.parquet file, a load_from_disk "
                                         "folder, or a hub id")
    split: str | None = option(None, help="split and slice, e.g. train, train[:1000], train[10%:]; for files only the "
                                          "slice applies")
    eval_path: str | None = option(None, help="the evaluation data, as path; None: path when eval_split is given, else "
                                              "no eval set")
    eval_split: str | None = option(None, help="split and slice of the evaluation data, e.g. test or train[-200:]")
    format: Literal["auto", "text", "prompt_completion", "messages", "preference", "unpaired"] = option(
        "auto", help="the rows' format; auto: detected from the columns present")
    text_column: str = option("text", help="the column of your data holding the text (format text)")
    prompt_column: str = option("prompt", help="the column holding the prompt")
    completion_column: str = option("completion", help="the column holding the completion")
    messages_column: str = option("messages", help="the column holding the chat messages (format messages)")
    chosen_column: str = option("chosen", help="the column holding the preferred completion (format preference)")
    rejected_column: str = option("rejected", help="the column holding the rejected completion (format preference)")
    label_column: str = option("label", help="the column holding the desirable/undesirable label (format unpaired)")
    max_length: int = option(1024, min=2, help="longest tokenized example (prompt + completion), in tokens")
    max_prompt_length: int | None = option(None, min=1, help="longest prompt in tokens; longer prompts keep their last "
                                                             "tokens; None: only max_length limits")
    max_completion_length: int | None = option(None, min=1, help="longest preference/unpaired completion in tokens; "
                                                                 "None: only max_length limits")
    apply_chat_template: bool | None = option(None, help="wrap prompts in the tokenizer's chat template; None: when "
                                                         "the tokenizer has a template and the data has a prompt")
    completion_only_loss: bool = option(True, help="prompt tokens carry no loss")
    packing: bool = option(False, help="concatenate examples into max_length rows (attention stays within each "
                                       "example)")

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
            elif column == "messages" and not isinstance(value, list):
                raise DataError(f"{row.where}: column {columns[column]!r} must be a list of {{role, content}} "
                                f"messages, got {type(value).__name__}")
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
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not value or all(not str(m["content"]).strip() for m in value)
