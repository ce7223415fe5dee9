"""The reference policy pi_ref that preference and RL methods stay close to, and its cached log-probs.

Where pi_ref's log-probs come from, cheapest first:
  1. a cache on disk (``precompute_ref_logps: true``): computed once before training, keyed by the model's weights
     and the exact token ids, so a second run never builds a reference model at all;
  2. LoRA: the policy itself with its adapters switched off (the base weights are frozen), no second copy;
  3. full fine-tuning: a frozen copy of the initial policy.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Protocol

import torch

from posttrain.data.batching import collate_sequences
from posttrain.engine import distributed
from posttrain.io import atomic_dir
from posttrain.models.forward import token_logps
from posttrain.models.lora import adapters_disabled, is_peft_model
from posttrain.models.specs import cache_root

log = logging.getLogger(__name__)
CACHE_VERSION = 1


class ScoredExample(Protocol):
    """An example whose completions pi_ref scores: PairExample (chosen, rejected), UnpairedExample (completion,
    mismatched completion)."""

    def scored_sequences(self) -> list[tuple[list[int], list[int]]]: ...

    def set_reference(self, values: list[list[float]]) -> None: ...


class ReferencePolicy:
    """log pi_ref(y_t | y_<t) per token, without gradients: a frozen copy, or the policy with adapters off (LoRA)."""

    def __init__(self, policy):
        self.frozen = None if is_peft_model(policy) else frozen_copy(policy)

    @torch.no_grad()
    def token_logps(self, policy, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        if self.frozen is not None:
            return token_logps(self.frozen, batch, temperature=temperature)[0].logps
        with adapters_disabled(policy):
            return token_logps(policy, batch, temperature=temperature)[0].logps


def reference_token_logps(reference: ReferencePolicy | None, policy, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi_ref per token for ``batch``: the cached values when the batch carries them (``precompute_ref_logps``),
    else computed by ``reference``."""
    if "ref_token_logps" in batch:
        return batch["ref_token_logps"]
    return reference.token_logps(policy, batch)


def frozen_copy(model):
    """A copy of ``model`` that never trains (eval mode, no gradients)."""
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


def model_fingerprint(model) -> str:
    """A content hash of the (base) weights: names, shapes, dtypes and a strided sample of each tensor's values.
    LoRA parameters are left out: the reference is the base model."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def reference_cache_key(model, examples: list[ScoredExample], settings: dict) -> str:
    """sha256 of the model fingerprint, the settings that change the numbers (dtype, ...) and every scored token id,
    so any change of model, data or tokenization gives a new key."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "model": model_fingerprint(model), **settings},
                                       sort_keys=True).encode())
    for example in examples:
        for prompt, completion in example.scored_sequences():
            digest.update(json.dumps([prompt, completion]).encode())
    return digest.hexdigest()[:32]


@torch.no_grad()
def compute_reference_logps(model, examples: list[ScoredExample], pad_token_id: int, batch_size: int) -> None:
    """Score every example's completions under ``model`` (the reference: call before any update) and store the
    per-token log-probs on the examples."""
    was_training = model.training
    model.eval()
    rows = [(i, j, seq) for i, e in enumerate(examples) for j, seq in enumerate(e.scored_sequences())]
    rows.sort(key=lambda r: len(r[2][0]) + len(r[2][1]))  # similar lengths per batch: little padding
    values: dict[tuple[int, int], list[float]] = {}
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_sequences([r[2] for r in chunk], pad_token_id).items()}
        with adapters_disabled(model):
            logps, mask = token_logps(model, batch)
        for row, (i, j, _) in enumerate(chunk):
            values[(i, j)] = logps.logps[row][mask[row]].float().cpu().tolist()
    for i, example in enumerate(examples):
        example.set_reference([values[(i, j)] for j in range(len(example.scored_sequences()))])
    model.train(was_training)


def precompute_reference_logps(model, examples: list[ScoredExample], pad_token_id: int, batch_size: int,
                               settings: dict, cache_dir: Path | None = None) -> Path:
    """Fill in reference log-probs from the cache, or compute them with ``model`` (which must still be the reference)
    and write the cache atomically. Returns the cache folder. Under torchrun each rank scores every world-size-th
    example, every rank gets all the values, and rank 0 writes the cache."""
    key = reference_cache_key(model, examples, settings)
    folder = Path(cache_dir or cache_root() / "ref_logps") / key
    # the same decision on every rank (a node without the file computes with the others)
    found = distributed.all_reduce_sum([float((folder / "logps.safetensors").is_file())])[0]
    if found == distributed.world_size():
        load_cached(folder, examples)
        log.warning("reference log-probs: reused the cache %s", folder)
        return folder
    log.warning("reference log-probs: computing for %d examples (cached in %s)", len(examples), folder)
    world = distributed.world_size()
    share = examples[distributed.rank() :: world]
    compute_reference_logps(model, share, pad_token_id, batch_size)
    if world > 1:
        parts = distributed.gather_objects([example.reference_values() for example in share])
        for rank, part in enumerate(parts):
            for example, values in zip(examples[rank::world], part):
                example.set_reference(values)
    if distributed.is_main():
        save_cached(folder, examples, settings)
    distributed.barrier()  # the cache is complete before any rank trains (a rank that dies here stops the others)
    return folder


def save_cached(folder: Path, examples: list[ScoredExample], settings: dict) -> None:
    from safetensors.torch import save_file

    lists = [values for e in examples for values in e.reference_values()]
    offsets = torch.tensor([0] + [len(v) for v in lists]).cumsum(0)
    flat = torch.tensor([x for v in lists for x in v], dtype=torch.float32)
    with atomic_dir(folder) as tmp:
        save_file({"values": flat, "offsets": offsets}, str(tmp / "logps.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, "examples": len(examples),
                                                   "sequences": len(lists), **settings}, indent=2) + "\n")


def load_cached(folder: Path, examples: list[ScoredExample]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "logps.safetensors"))
    flat, offsets = tensors["values"], tensors["offsets"].tolist()
    position = 0
    for example in examples:
        n = len(example.scored_sequences())
        example.set_reference([flat[offsets[k] : offsets[k + 1]].tolist() for k in range(position, position + n)])
        position += n
