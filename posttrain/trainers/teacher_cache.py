"""Offline logit distillation: the teacher's top-k next-token log-probs on the training rows, computed once and cached.

For every completion token of every train and eval row the cache holds the teacher's k most likely token ids and its
log-probs on the k + 1 bins {those tokens, the rest} at temperature T (``posttrain.math.chunked_top_k_teacher``:
exactly what ``teacher_top_k: k`` keeps of the live teacher), so training needs no teacher in memory and its losses
equal the live teacher's with the same k. Like the DPO reference cache (``trainers/reference.py``, whose key this
reuses) it is keyed by a content hash of the teacher's weights, every row's token ids and completion mask, k, T and
the dtype, so another teacher, data set, tokenization, k or T never reads a stale cache; it is written atomically as
safetensors (values, ids, per-row offsets) with a ``meta.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.data.batching import collate
from posttrain.data.tokenize import Example
from posttrain.engine import distributed
from posttrain.errors import DataError
from posttrain.io import atomic_dir
from posttrain.math import chunked_top_k_teacher, shifted_targets
from posttrain.models.forward import causal_lm, hidden_states
from posttrain.models.quantize import dequantized
from posttrain.models.specs import cache_root
from posttrain.trainers.reference import reference_cache_key

log = logging.getLogger(__name__)
FILE = "teacher_top_k.safetensors"


@dataclass
class TeacherTargets:
    """A tokenized row with the teacher's cached top-k bins of each of its completion tokens (in order)."""

    example: Example
    logps: torch.Tensor  # (n, k + 1): log-probs on the top-k tokens, then the rest
    indices: torch.Tensor  # (n, k): the top-k token ids

    def __len__(self) -> int:
        return len(self.example)

    def scored_sequences(self) -> list[tuple[list[int], list[int]]]:
        """What the cache key hashes: the token ids and which of them carry loss."""
        return [(self.example.input_ids, self.example.loss_mask)]


def collate_teacher_targets(rows: list[TeacherTargets], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``collate`` of the rows, plus ``teacher_logps`` ``(M, k + 1)`` and ``teacher_indices`` ``(M, k)`` in the order of
    the batch's completion targets (row by row, as ``x[:, :-1][mask]`` reads them)."""
    batch = collate([row.example for row in rows], pad_token_id)
    batch["teacher_logps"] = torch.cat([row.logps for row in rows])
    batch["teacher_indices"] = torch.cat([row.indices for row in rows])
    return batch


def teacher_cache_settings(teacher, top_k: int, temperature: float, packing: bool) -> dict:
    """Everything besides weights and rows that changes the cached numbers (part of the key and of meta.json)."""
    return {"kind": "teacher_top_k", "top_k": top_k, "temperature": temperature, "packing": packing,
            "dtype": str(next(teacher.parameters()).dtype)}


@torch.inference_mode()
def compute_teacher_targets(teacher, examples: list[Example], top_k: int, temperature: float, pad_token_id: int,
                            batch_size: int) -> list[TeacherTargets]:
    """Score every row with ``teacher`` (length-sorted batches) and keep its top-k bins per completion token."""
    device = next(teacher.parameters()).device
    head = causal_lm(teacher).get_output_embeddings()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    result: dict[int, TeacherTargets] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in chunk], pad_token_id).items()}
        _, mask = shifted_targets(batch["input_ids"], batch["loss_mask"])
        rows = hidden_states(teacher, batch)[:, :-1][mask]
        logps, indices = chunked_top_k_teacher(rows, dequantized(head.weight), top_k, temperature, head.bias)
        counts = mask.sum(-1).tolist()
        for i, row_logps, row_indices in zip(chunk, logps.float().cpu().split(counts), indices.cpu().split(counts)):
            result[i] = TeacherTargets(examples[i], row_logps.clone(), row_indices.to(torch.int32))
    return [result[i] for i in range(len(examples))]


def cached_teacher_targets(teacher, examples: list[Example], settings: dict, pad_token_id: int, batch_size: int,
                           cache_dir: str | Path | None = None) -> tuple[list[TeacherTargets], Path, bool]:
    """The rows with the teacher's top-k bins: read from the cache, or computed with ``teacher`` and written there.
    Returns the rows, the cache folder and whether it was reused. Under torchrun each rank scores every
    world-size-th row, every rank gets all, rank 0 writes."""
    placeholders = [TeacherTargets(e, torch.empty(0), torch.empty(0)) for e in examples]
    key = reference_cache_key(teacher, placeholders, settings)
    folder = Path(cache_dir or cache_root() / "teacher_top_k") / key
    found = distributed.all_reduce_sum([float((folder / FILE).is_file())])[0]
    if found == distributed.world_size():
        log.warning("teacher top-%d: reused the cache %s", settings["top_k"], folder)
        return load_teacher_targets(folder, examples), folder, True
    log.warning("teacher top-%d: computing for %d rows (cached in %s)", settings["top_k"], len(examples), folder)
    world, rank = distributed.world_size(), distributed.rank()
    mine = compute_teacher_targets(teacher, examples[rank::world], settings["top_k"], settings["temperature"],
                                   pad_token_id, batch_size)
    rows = mine
    if world > 1:
        parts = distributed.gather_objects([(r.logps, r.indices) for r in mine])
        rows = [None] * len(examples)
        for part_rank, part in enumerate(parts):
            for index, (logps, indices) in zip(range(part_rank, len(examples), world), part):
                rows[index] = TeacherTargets(examples[index], logps, indices)
    if distributed.is_main():
        save_teacher_targets(folder, rows, settings)
    distributed.barrier()  # the cache is complete before any rank trains
    return rows, folder, False


def save_teacher_targets(folder: Path, rows: list[TeacherTargets], settings: dict) -> None:
    import json

    from safetensors.torch import save_file

    offsets = torch.tensor([0] + [row.logps.shape[0] for row in rows]).cumsum(0)
    tensors = {"logps": torch.cat([row.logps for row in rows]).contiguous(),
               "indices": torch.cat([row.indices for row in rows]).contiguous(), "offsets": offsets}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / FILE))
        (tmp / "meta.json").write_text(json.dumps({"rows": len(rows), "tokens": int(offsets[-1]), **settings},
                                                  indent=2) + "\n")


def load_teacher_targets(folder: Path, examples: list[Example]) -> list[TeacherTargets]:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / FILE))
    logps, indices, offsets = tensors["logps"], tensors["indices"], tensors["offsets"].tolist()
    rows = [TeacherTargets(e, logps[offsets[i] : offsets[i + 1]], indices[offsets[i] : offsets[i + 1]])
            for i, e in enumerate(examples)]
    if len(offsets) != len(examples) + 1 or any(row.logps.shape[0] != sum(row.example.loss_mask[1:]) for row in rows):
        raise DataError(f"teacher cache {folder} does not match the rows' completion tokens: delete the folder")
    return rows
