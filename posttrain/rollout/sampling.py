"""Batched sampling for RL and evaluation: token ids in, token ids, masks and sampling log-probs out.

``sample(model, tokenizer, prompt_ids, params, group_size=G)`` draws G completions per prompt. Each prompt is prefilled
once and its KV cache is given to its G rows; rows that finish (EOS, a stop string) leave the batch, so they stop
costing compute. Randomness is per row (``posttrain.rollout.choice``): a row's tokens depend only on the model, its
prompt, the seed, its prompt index and its sample index, never on batching.

Everything training needs comes back as tensors (``Rollout``), so no text is ever re-tokenized.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from posttrain.generation import chat_prompt_ids
from posttrain.rollout.choice import choose_tokens, row_keys
from posttrain.rollout.decoders import make_decoder


@dataclass
class SamplingParams:
    max_new_tokens: int = field(default=64, metadata={"min": 1})
    temperature: float = field(default=1.0, metadata={"min": 0})  # 0: greedy
    top_p: float = field(default=1.0, metadata={"min": 0, "max": 1})  # 1: off
    top_k: int = field(default=0, metadata={"min": 0})  # 0: off
    stop_strings: tuple[str, ...] = ()  # a completion ends with the token that completes one of these
    seed: int = 0
    eos_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's and the model's generation config's


@dataclass
class Rollout:
    """``N = num_prompts * group_size`` rows, prompt by prompt, the rows of a group contiguous.

    ``logps[i, t] = log softmax(logits_t / T)[completion_ids[i, t]]``: the log-prob under the temperature-scaled
    distribution *before* top-k / top-p truncation (what a trainer recomputes from temperature-scaled logits); with
    temperature 0 (greedy) it is taken at temperature 1.
    """

    prompt_ids: list[list[int]]  # one per row, unpadded
    completion_ids: torch.Tensor  # (N, L) long, right-padded with pad_token_id
    completion_mask: torch.Tensor  # (N, L) 1 on generated tokens up to and including EOS / the stop string's last token
    logps: torch.Tensor  # (N, L) float32, 0 where the mask is 0
    truncated: torch.Tensor  # (N,) bool: no EOS or stop string within max_new_tokens
    texts: list[str]  # decoded without special tokens, ending with the stop string when one ended the row
    prompt_index: torch.Tensor  # (N,) which prompt each row came from
    generation_time_s: float
    num_generated_tokens: int

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def chat_prompts(tokenizer, prompts: list[str], system: str | None = None) -> list[list[int]]:
    """Token ids of single-turn chat prompts ending with the assistant's generation prompt."""
    return [chat_prompt_ids(tokenizer, prompt, system) for prompt in prompts]


def eos_ids(model, tokenizer, params: SamplingParams) -> list[int]:
    if params.eos_token_ids is not None:
        return list(params.eos_token_ids)
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, (list, tuple)) else [configured] if configured is not None else [])
    return sorted(ids)


def first_stop_end(text: str, stop_strings) -> int | None:
    """End index (exclusive) of the earliest-ending occurrence of any stop string in ``text``, else None."""
    ends = [text.find(s) + len(s) for s in stop_strings if s and s in text]
    return min(ends) if ends else None


def compaction_order(finished: torch.Tensor) -> torch.Tensor:
    """The surviving rows' old indices in their new order: survivors keep their place, and the holes that finished
    rows leave are filled by survivors from the end of the batch, so at most one row moves per finished row."""
    keep = ~finished
    count = int(keep.sum())
    order = torch.arange(count, device=finished.device)
    holes = finished[:count].nonzero().squeeze(1)
    order[holes] = keep[count:].nonzero().squeeze(1) + count
    return order


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams, group_size: int = 1,
           batch_size: int | None = None, backend: str = "auto", share_prefill: bool = True) -> Rollout:
    """Sample ``group_size`` completions for each prompt (token ids, no padding).

    ``batch_size``: rows (completions) decoded together, rounded down to whole groups (at least one group); None
    decodes all rows at once. Prompts are sorted by length into batches, so a batch carries little padding.
    ``backend``: ``auto``, ``llama`` (fast path) or ``hf`` (any causal LM); see ``posttrain.rollout.decoders``.
    ``share_prefill=False`` prefills every row's prompt separately (same tokens, more work: for tests and benchmarks).
    """
    started = time.perf_counter()
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("sample() needs at least one prompt, and every prompt needs at least one token")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = torch.tensor(eos_ids(model, tokenizer, params), dtype=torch.long, device=device)
    rows_total, width = len(prompt_ids) * group_size, params.max_new_tokens
    tokens = torch.full((rows_total, width), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros(rows_total, width, device=device)
    lengths = torch.full((rows_total,), width, dtype=torch.long, device=device)
    ended = torch.zeros(rows_total, dtype=torch.bool, device=device)

    # prefill units: a prompt and the sample indices of the rows that share its cache
    shared = group_size if share_prefill else 1
    units = [(p, range(s, s + shared)) for p in range(len(prompt_ids)) for s in range(0, group_size, shared)]
    units.sort(key=lambda unit: len(prompt_ids[unit[0]]))
    per_batch = max(1, (batch_size or rows_total) // shared)
    was_training = model.training
    model.eval()
    try:  # one decoder (its KV cache, packed weights) serves every batch of this call
        decoder = make_decoder(model, min(per_batch * shared, rows_total),
                               max(map(len, prompt_ids)) + params.max_new_tokens, backend)
        for start in range(0, len(units), per_batch):
            batch = units[start : start + per_batch]
            prompt_index = torch.tensor([p for p, samples in batch for _ in samples], device=device)
            sample_index = torch.tensor([s for _, samples in batch for s in samples], device=device)
            _decode_batch(decoder, tokenizer, [prompt_ids[p] for p, _ in batch], shared, prompt_index, sample_index,
                          group_size, params, stops, tokens, logps, lengths, ended)
    finally:
        model.train(was_training)

    longest = max(1, int(lengths.max()))
    mask = torch.arange(longest, device=device)[None, :] < lengths[:, None]
    tokens, logps = tokens[:, :longest].masked_fill(~mask, pad_id), logps[:, :longest] * mask
    texts = tokenizer.batch_decode([row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())],
                                   skip_special_tokens=True)
    if params.stop_strings:
        texts = [text[: first_stop_end(text, params.stop_strings) or len(text)] for text in texts]
    return Rollout(
        prompt_ids=[list(p) for p in prompt_ids for _ in range(group_size)],
        completion_ids=tokens, completion_mask=mask.long(), logps=logps, truncated=~ended, texts=texts,
        prompt_index=torch.arange(len(prompt_ids), device=device).repeat_interleave(group_size),
        generation_time_s=time.perf_counter() - started, num_generated_tokens=int(lengths.sum()),
    )


def _decode_batch(decoder, tokenizer, prompts, shared, prompt_index, sample_index, group_size, params, stops,
                  tokens, logps, lengths, ended) -> None:
    """Generate for one batch: ``prompts`` are prefilled once each and shared by ``shared`` consecutive rows, labelled
    by ``prompt_index`` and ``sample_index`` (which fix each row's random stream and output row). Writes each row's
    tokens, log-probs, length and end flag in place."""
    device = tokens.device
    rows = prompt_index * group_size + sample_index  # active batch slot -> output row
    keys = row_keys(params.seed, prompt_index, sample_index)
    window = 4 * max((len(s) for s in params.stop_strings), default=0) + 2  # tokens that can hold a stop string

    logits = decoder.prefill(prompts, shared)
    for step in range(params.max_new_tokens):
        chosen, chosen_logps = choose_tokens(logits, keys, step, params.temperature, params.top_k, params.top_p)
        tokens[rows, step], logps[rows, step] = chosen, chosen_logps
        finished = torch.isin(chosen, stops)
        if params.stop_strings:
            tails = tokenizer.batch_decode(tokens[rows, max(0, step + 1 - window) : step + 1].tolist(),
                                           skip_special_tokens=True)
            finished |= torch.tensor([first_stop_end(t, params.stop_strings) is not None for t in tails], device=device)
        if step + 1 == params.max_new_tokens:
            ended[rows[finished]] = True
            break
        if finished.any():
            lengths[rows[finished]] = step + 1
            ended[rows[finished]] = True
            if finished.all():
                break
            order = compaction_order(finished)
            rows, keys, chosen = rows[order], keys[order], chosen[order]
            decoder.reorder(order)
        logits = decoder.step(chosen)
