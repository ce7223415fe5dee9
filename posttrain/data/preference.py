"""Preference pairs (DPO family, reward models) and unpaired examples (KTO) as token ids with completion masks.

A pair is tokenized once: the prompt ids (shared by both sides; checked) and each completion's ids. Batches put the
chosen sequences first and the rejected second, so one forward pass scores both. Skipped rather than failing: a pair
whose chosen and rejected are identical (it carries no preference; the count is logged). Errors: a missing column,
an empty response (``normalize_rows``), a prompt that leaves no room for a completion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from posttrain.data.batching import collate_sequences
from posttrain.data.formats import DataConfig
from posttrain.data.shared_prompts import pack_shared_prompts
from posttrain.data.sources import Row, finite_number
from posttrain.data.tokenize import encode_prompt_completion, uses_chat_template
from posttrain.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PairExample:
    prompt_ids: list[int]
    chosen_ids: list[int]  # completion tokens only
    rejected_ids: list[int]
    where: str = ""
    margin: float | None = None  # optional per-pair margin column (reward models)
    # reference log-probs of each completion token (precompute_ref_logps), filled in by the trainer
    ref_chosen: list[float] | None = None
    ref_rejected: list[float] | None = None

    def __len__(self) -> int:  # tokens that go through the model for this pair (bucketing, tokens/s)
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    def scored_sequences(self) -> list[tuple[list[int], list[int]]]:
        return [(self.prompt_ids, self.chosen_ids), (self.prompt_ids, self.rejected_ids)]

    def set_reference(self, values: list[list[float]]) -> None:
        self.ref_chosen, self.ref_rejected = values

    def reference_values(self) -> list[list[float]]:
        return [self.ref_chosen, self.ref_rejected]


@dataclass
class UnpairedExample:
    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    where: str = ""
    # another example's completion, scored after this prompt for KTO's KL reference point; fixed per example so
    # that its reference log-probs can be precomputed like the others
    mismatched_ids: list[int] = field(default_factory=list)
    ref_logps: list[float] | None = None
    ref_mismatched: list[float] | None = None

    def __len__(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.completion_ids) + len(self.mismatched_ids)

    def scored_sequences(self) -> list[tuple[list[int], list[int]]]:
        return [(self.prompt_ids, self.completion_ids), (self.prompt_ids, self.mismatched_ids)]

    def set_reference(self, values: list[list[float]]) -> None:
        self.ref_logps, self.ref_mismatched = values

    def reference_values(self) -> list[list[float]]:
        return [self.ref_logps, self.ref_mismatched]


@dataclass
class PairStats:
    rows: int = 0
    skipped_identical: int = 0
    truncated_prompts: int = 0
    truncated_completions: int = 0
    skipped_where: list[str] = field(default_factory=list)

    def report(self, name: str) -> str:
        first = f" (first: {', '.join(self.skipped_where[:3])})" if self.skipped_where else ""
        return (f"{name}: {self.rows} rows; skipped {self.skipped_identical} pairs whose chosen and rejected are "
                f"identical{first}; {self.truncated_prompts} prompts and {self.truncated_completions} completions "
                "truncated")


def truncate_prompt_completion(prompt_ids: list[int], completion_ids: list[int], config: DataConfig, stats, where: str):
    """Keep the last ``max_prompt_length`` prompt tokens, then cut the completion to ``max_completion_length`` and to
    what ``max_length`` leaves after the prompt."""
    if config.max_prompt_length is not None and len(prompt_ids) > config.max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - config.max_prompt_length:]
        stats.truncated_prompts += 1
    room = config.max_length - len(prompt_ids)
    if room <= 0:
        raise DataError(
            f"{where}: the prompt alone is {len(prompt_ids)} tokens, which leaves no room for the completion within "
            f"max_length={config.max_length}; raise max_length or set max_prompt_length"
        )
    if config.max_completion_length is not None:
        room = min(room, config.max_completion_length)
    if len(completion_ids) > room:
        completion_ids = completion_ids[:room]
        stats.truncated_completions += 1
    return prompt_ids, completion_ids


def tokenize_pairs(rows: list[Row], tokenizer, config: DataConfig) -> tuple[list[PairExample], PairStats]:
    """Preference rows (prompt, chosen, rejected; plain or conversational) -> PairExamples."""
    chat = uses_chat_template(tokenizer, config, "preference")
    stats = PairStats(rows=len(rows))
    examples = []
    for row in rows:
        prompt, chosen, rejected = row.values["prompt"], row.values["chosen"], row.values["rejected"]
        if chosen == rejected:
            stats.skipped_identical += 1
            stats.skipped_where.append(row.where)
            continue
        prompt_ids, chosen_ids = encode_prompt_completion(tokenizer, prompt, chosen, chat, row.where)
        rejected_prompt_ids, rejected_ids = encode_prompt_completion(tokenizer, prompt, rejected, chat, row.where)
        if rejected_prompt_ids != prompt_ids:
            raise DataError(f"{row.where}: the prompt tokenizes differently before chosen and before rejected")
        before = stats.truncated_prompts
        truncated_prompt, chosen_ids = truncate_prompt_completion(prompt_ids, chosen_ids, config, stats, row.where)
        stats.truncated_prompts = before  # count each pair's prompt once
        _, rejected_ids = truncate_prompt_completion(prompt_ids, rejected_ids, config, stats, row.where)
        margin = row.values.get("margin")
        examples.append(PairExample(truncated_prompt, chosen_ids, rejected_ids, row.where,
                                    None if margin is None else finite_number(margin, row.where, "margin")))
    if stats.skipped_identical:
        log.warning(stats.report("preference data"))
    if not examples:
        raise DataError("no usable preference pair: every row was skipped (chosen identical to rejected)")
    return examples, stats


def tokenize_unpaired(rows: list[Row], fmt: str, tokenizer, config: DataConfig):
    """KTO rows -> UnpairedExamples. Unpaired rows (prompt, completion, label) are used as they are; preference rows
    are split into a desirable (chosen) and an undesirable (rejected) example."""
    chat = uses_chat_template(tokenizer, config, fmt)
    stats = PairStats(rows=len(rows))
    examples = []
    for row in rows:
        if fmt == "preference":
            items = [(row.values["chosen"], True), (row.values["rejected"], False)]
        else:
            label = row.values["label"]
            items = [(row.values["completion"], label is True or label in (1, "true", "True"))]
        for completion, desirable in items:
            prompt_ids, completion_ids = encode_prompt_completion(tokenizer, row.values["prompt"], completion, chat,
                                                                  row.where)
            prompt_ids, completion_ids = truncate_prompt_completion(prompt_ids, completion_ids, config, stats,
                                                                    row.where)
            examples.append(UnpairedExample(prompt_ids, completion_ids, desirable, row.where))
    for i, example in enumerate(examples):
        # the next example whose prompt differs (a completion after a prompt it does not answer)
        partner = next((examples[(i + k) % len(examples)] for k in range(1, len(examples))
                        if examples[(i + k) % len(examples)].prompt_ids != example.prompt_ids), example)
        room = config.max_length - len(example.prompt_ids)
        example.mismatched_ids = partner.completion_ids[:room]
    return examples, stats


def collate_pairs(examples: list[PairExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> one batch of 2B rows: chosen sequences first, then rejected (one forward pass scores both)."""
    sequences = [(e.prompt_ids, e.chosen_ids) for e in examples] + [(e.prompt_ids, e.rejected_ids) for e in examples]
    ref = [e.ref_chosen for e in examples] + [e.ref_rejected for e in examples]
    batch = collate_sequences(sequences, pad_token_id, ref)
    if all(e.margin is not None for e in examples):
        batch["margin"] = torch.tensor([e.margin for e in examples], dtype=torch.float32)
    return batch


def collate_pairs_packed(examples: list[PairExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """B pairs -> a few rows of whole pairs back to back, each pair's prompt run through the model once
    (``pack_shared_prompts``: chosen and rejected are the two branches of their prompt).

    ``sequence_index`` names each token's sequence as ``collate_pairs`` orders its rows: pair k's chosen is k, its
    rejected B + k. The loss, metrics and gradients equal ``collate_pairs``'s (tests/trainers/test_preference.py).
    """
    n = len(examples)
    batch = pack_shared_prompts(
        [(e.prompt_ids, [(e.chosen_ids, k), (e.rejected_ids, n + k)]) for k, e in enumerate(examples)],
        pad_token_id, 2 * n)
    completion_position = batch.pop("completion_position")
    if all(e.ref_chosen is not None and e.ref_rejected is not None for e in examples):
        references = [e.ref_chosen for e in examples] + [e.ref_rejected for e in examples]
        targets = batch["loss_mask"][:, 1:].bool()  # target column t predicts token t + 1
        sequences = batch["sequence_index"][:, 1:][targets].tolist()
        positions = completion_position[:, 1:][targets].tolist()
        # without a prompt a completion's first token is no target, and its cached values start at its second
        skip = [0 if e.prompt_ids else 1 for e in examples] * 2
        try:
            values = torch.tensor([references[s][j - skip[s]] for s, j in zip(sequences, positions)],
                                  dtype=torch.float32)
        except IndexError:
            raise DataError("cached reference log-probs do not match the completions' lengths") from None
        if sum(len(r) for r in references) != len(values):
            raise DataError("cached reference log-probs do not match the completions' lengths")
        batch["ref_token_logps"] = torch.zeros(targets.shape, dtype=torch.float32).masked_scatter(targets, values)
    if all(e.margin is not None for e in examples):
        batch["margin"] = torch.tensor([e.margin for e in examples], dtype=torch.float32)
    return batch


def sequence_sums(values: torch.Tensor, mask: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sequence sums of per-target ``values`` ``(R, T-1)`` where ``mask`` is set: row sums for a padded batch,
    sums per ``sequence_index`` for a packed one. Shape ``(number of sequences,)``."""
    if "sequence_index" not in batch:
        return (values * mask.to(values.dtype)).sum(-1)
    targets = batch["sequence_index"][:, 1:][mask]  # target t is token t + 1, of that token's sequence
    return values.new_zeros(count_sequences(batch)).index_add(0, targets, values[mask])


def count_sequences(batch: dict[str, torch.Tensor]) -> int:
    """Sequences in a batch: its rows, or ``num_sequences`` for packed rows."""
    return int(batch["num_sequences"]) if "num_sequences" in batch else batch["input_ids"].shape[0]


def collate_unpaired(examples: list[UnpairedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """B examples -> B matched rows, then B mismatched rows (each prompt with another example's completion, for
    KTO's KL reference point)."""
    matched = [(e.prompt_ids, e.completion_ids) for e in examples]
    mismatched = [(e.prompt_ids, e.mismatched_ids) for e in examples]
    batch = collate_sequences(matched + mismatched, pad_token_id,
                              [e.ref_logps for e in examples] + [e.ref_mismatched for e in examples])
    batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
    return batch
