"""Batches that cut padding, in an order that is a pure function of (seed, epoch) so runs resume exactly.

An optimizer step takes ``batch_size * grad_accum_steps`` examples (the step batch). Step batches are drawn from
length buckets (shuffle, then sort within windows of ``bucket_window`` step batches), and each step batch is split
into ``grad_accum_steps`` micro-batches of similar lengths. Because the step batch does not depend on how it is split,
1 x 8 and 8 x 1 see exactly the same examples in the same optimizer step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from posttrain.data.tokenize import Example


def step_batches(lengths: list[int], step_size: int, seed: int, epoch: int, shuffle: bool = True,
                 bucket_window: int = 16) -> list[list[int]]:
    """Indices of the examples in each optimizer step of ``epoch``; the last partial batch is kept."""
    order = list(range(len(lengths)))
    if shuffle:
        random.Random(seed * 100_003 + epoch).shuffle(order)
    window = step_size * bucket_window
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + step_size] for i in range(0, len(chunk), step_size)]
    if shuffle:  # sorted buckets would otherwise run short-to-long inside each window
        random.Random(seed * 100_003 + epoch + 1).shuffle(batches)
    return batches


def split_micro_batches(indices: list[int], lengths: list[int], n_micro: int) -> list[list[int]]:
    """Split one step batch into ``n_micro`` micro-batches of neighbouring lengths (less padding per micro-batch)."""
    ordered = sorted(indices, key=lambda i: lengths[i])
    size = -(-len(ordered) // n_micro)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def pack_examples(examples: list[Example], max_length: int) -> list[Example]:
    """Greedy first-fit packing into rows of at most ``max_length`` tokens (Krell et al. 2021 show first-fit
    decreasing wastes little). Each row keeps per-example ``position_ids`` that restart at 0, which transformers turns
    into a block-diagonal causal mask, so no token attends across examples. The first token of every example carries
    no loss: it would otherwise be predicted from the previous example."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for example in sorted(examples, key=len, reverse=True):
        for r, free in enumerate(room):
            if len(example) <= free:
                rows[r].append(example)
                room[r] -= len(example)
                break
        else:
            rows.append([example])
            room.append(max_length - len(example))
    packed = []
    for row in rows:
        ids, mask, positions = [], [], []
        for example in row:
            ids += example.input_ids
            mask += [0] + example.loss_mask[1:]
            positions += list(range(len(example)))
        packed.append(PackedExample(ids, mask, "+".join(e.where for e in row), positions))
    return packed


@dataclass
class PackedExample(Example):
    position_ids: list[int] | None = None


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Packed rows add ``position_ids``; the forward pass then gives the model no
    attention mask (see pack_examples), and ``attention_mask`` only marks real tokens."""
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        attention_mask[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(example.loss_mask)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
    if isinstance(examples[0], PackedExample):
        positions = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example)
            # padding continues the last example's positions so it is never mistaken for a new sequence
            positions[row, :n] = torch.tensor(example.position_ids)
            positions[row, n:] = torch.arange(example.position_ids[-1] + 1, example.position_ids[-1] + 1 + width - n)
        batch["position_ids"] = positions
    return batch


def count_real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-pad tokens in a batch (for tokens/s)."""
    return int(batch["attention_mask"].sum())


def collate_sequences(sequences: list[tuple[list[int], list[int]]], pad_token_id: int,
                      ref_logps: list[list[float] | None] | None = None) -> dict[str, torch.Tensor]:
    """(prompt_ids, completion_ids) rows -> right-padded input_ids, attention_mask and a completion loss_mask.
    With ``ref_logps`` (one list of per-completion-token values per row), also ``ref_token_logps`` ``(N, T-1)``
    aligned with the shifted targets."""
    width = max(len(p) + len(c) for p, c in sequences)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(sequences):
        length = len(prompt) + len(completion)
        input_ids[row, :length] = torch.tensor(prompt + completion)
        attention_mask[row, :length] = 1
        loss_mask[row, len(prompt):length] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}
    if ref_logps is not None and all(r is not None for r in ref_logps):
        ref = torch.zeros((n, width - 1), dtype=torch.float32)
        for row, (prompt, completion) in enumerate(sequences):
            # target position t predicts token t + 1, so completion token j sits at column len(prompt) - 1 + j
            ref[row, len(prompt) - 1 : len(prompt) - 1 + len(completion)] = torch.tensor(ref_logps[row])
        batch["ref_token_logps"] = ref
    return batch
