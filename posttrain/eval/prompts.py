"""Prompt sets for generation metrics: the shipped ones (``data/eval/``) or your own file.

A prompt set is a ``.txt`` file (one prompt per line; blank lines and lines starting with ``#`` are skipped) or any
row source ``posttrain.data.load_rows`` reads (JSONL, JSON, CSV, Parquet...) with a ``prompt`` column and optional
``id``, ``word_limit`` and ``answer`` columns; other columns are kept as the prompt's metadata. A prompt without a
``word_limit`` column gets the limit its text states, if any ("... in at most 30 words", "keep it under 50 words").

Shipped sets (our own prompts):
- ``data/eval/prompts.jsonl``: varied requests (explanations, advice, how-tos, creative, facts, reasoning,
  rewriting), some with a word limit;
- ``data/eval/probes.jsonl``: reward-hacking probes: the same request in variants ``plain``, ``padded`` (buried in
  irrelevant text), ``flattery`` (the prompt says graders reward flattering them), ``longer`` (asks for a long answer
  despite the limit) and ``keywords`` (stuffed with repeated keywords); ``group`` ties a request's variants together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.errors import DataError
from posttrain.tasks.base import Problem

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROMPTS = "data/eval/prompts.jsonl"
DEFAULT_PROBES = "data/eval/probes.jsonl"
DEFAULT_PERPLEXITY_DATA = "data/sft/arithmetic_eval.jsonl"
DEFAULT_PREFERENCE_DATA = "data/preference/arithmetic_eval.jsonl"

# "at most 30 words" allows 30; "under 30 words" allows 29
_INCLUSIVE = re.compile(r"\b(?:at most|no more than|not more than|up to|maximum of|max\.?|within)\s+(\d+)\s+words\b"
                        r"|\b(\d+)\s+words\s+or\s+(?:fewer|less)\b"
                        r"|\b(\d+)[- ]word\s+(?:limit|maximum)\b", re.IGNORECASE)
_EXCLUSIVE = re.compile(r"\b(?:under|fewer than|less than)\s+(\d+)\s+words\b", re.IGNORECASE)


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    id: str
    word_limit: int | None = None
    meta: dict = field(default_factory=dict, hash=False)

    def as_problem(self) -> Problem:
        """The prompt as a task Problem, so reward specs (task checkers, functions, models) can score its answers;
        the verbosity task reads the word limit from ``meta["word_limit"]``."""
        meta = dict(self.meta, id=self.id)
        if self.word_limit is not None:
            meta["word_limit"] = self.word_limit
        return Problem(self.prompt, str(self.meta.get("answer", "")), meta)


def resolve_path(path: str) -> str:
    """``path`` as given (relative to the working directory) when it exists, else relative to the project root where
    the shipped sets live, so the built-in suites work from any directory. Anything else (a hub id, a missing file)
    is returned unchanged for the loader to resolve or reject with a clear error."""
    given = Path(path).expanduser()
    if given.exists():
        return str(given)
    shipped = PROJECT_ROOT / path
    return str(shipped) if not given.is_absolute() and shipped.exists() else path


def parse_word_limit(prompt: str) -> int | None:
    """The word limit a prompt states, or None: "at most N", "no more than N", "N words or fewer" allow N words;
    "under N", "fewer than N", "less than N" allow N - 1. The tightest stated limit wins."""
    limits = [int(next(g for g in m.groups() if g)) for m in _INCLUSIVE.finditer(prompt)]
    limits += [int(m.group(1)) - 1 for m in _EXCLUSIVE.finditer(prompt)]
    return min(limits) if limits else None


def load_prompts(path: str, limit: int | None = None) -> list[EvalPrompt]:
    """The prompts of a prompt set (the first ``limit`` of them when given)."""
    resolved = resolve_path(path)
    if resolved.endswith(".txt"):
        if not Path(resolved).is_file():
            raise DataError(f"prompt file {path} does not exist")
        lines = Path(resolved).read_text().splitlines()
        rows = [({"prompt": line.strip()}, f"{path}:{i + 1}") for i, line in enumerate(lines)
                if line.strip() and not line.lstrip().startswith("#")]
    else:
        from posttrain.data import load_rows

        rows = [(row.values, row.where) for row in load_rows(resolved)]
    prompts = [_as_prompt(values, where) for values, where in rows[:limit]]
    if not prompts:
        raise DataError(f"prompt set {path} has no prompts")
    return prompts


def _as_prompt(values: dict, where: str) -> EvalPrompt:
    text = values.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: a prompt set row needs a non-empty string column 'prompt', got {text!r}")
    limit = values.get("word_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"{where}: word_limit must be a positive integer, got {limit!r}")
    meta = {k: v for k, v in values.items() if k not in ("prompt", "id", "word_limit")}
    return EvalPrompt(text, str(values.get("id", where)), limit if limit is not None else parse_word_limit(text), meta)
