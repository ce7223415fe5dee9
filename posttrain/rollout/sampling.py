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

from posttrain.models.loading import DTYPES
from posttrain.rollout.choice import choose_tokens, row_keys
from posttrain.rollout.decoders import make_decoder
from posttrain.rollout.drafts import PromptLookupDrafter


@dataclass
class SamplingParams:
    max_new_tokens: int = field(default=64, metadata={"min": 1})
    temperature: float = field(default=1.0, metadata={"min": 0})  # 0: greedy
    top_p: float = field(default=1.0, metadata={"min": 0, "max": 1})  # 1: off
    top_k: int = field(default=0, metadata={"min": 0})  # 0: off
    stop_strings: tuple[str, ...] = ()  # a completion ends with the token that completes one of these
    seed: int = 0
    # added to each prompt's index in the sampling keys: where these prompts start in a larger batch, so that a share
    # of it (a rank's, under torchrun) samples exactly the tokens the whole batch would give those prompts
    prompt_offset: int = 0
    eos_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's and the model's generation config's
    # speculative decoding by prompt lookup, exact (``_decode_batch``): up to this many draft tokens per row and
    # forward; 0: off. It pays only when few rows decode text that repeats itself (docs/benchmarks.md): off by default.
    draft_tokens: int = field(default=0, metadata={"min": 0})
    # what the decoder computes in: None, the model's dtype (float32: the trainer's own log-probs; under autocast, the
    # autocast dtype), or e.g. "bfloat16" for a float32 model: faster on GPUs and on CPUs with AVX512-BF16
    # (docs/benchmarks.md), from a rounded copy of the weights, so the tokens and log-probs are a slightly different
    # policy's than the trainer's float32 one
    dtype: str | None = None


@dataclass
class Rollout:
    """``N = num_prompts * group_size`` rows, prompt by prompt, the rows of a group contiguous.

    ``logps[i, t] = log softmax(logits_t / T)[completion_ids[i, t]]``: the log-prob under the temperature-scaled
    distribution *before* top-k / top-p truncation (what a trainer recomputes from temperature-scaled logits); with
    temperature 0 (greedy) it is taken at temperature 1. Decoded in another dtype (``SamplingParams.dtype``), it is
    that rounded model's log-prob; the trainers never put it in a loss, they score every token themselves.
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
    num_decode_forwards: int = 0  # decode steps after the prefills; fewer than tokens per row when drafts are kept

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def eos_ids(model, tokenizer, params: SamplingParams) -> list[int]:
    if params.eos_token_ids is not None:
        return list(params.eos_token_ids)
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, (list, tuple)) else [configured] if configured is not None else [])
    return sorted(ids)


def compute_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown rollout dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


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
    out = _Outputs(tokens=torch.full((rows_total, width), pad_id, dtype=torch.long, device=device),
                   logps=torch.zeros(rows_total, width, device=device),
                   lengths=torch.full((rows_total,), width, dtype=torch.long, device=device),
                   ended=torch.zeros(rows_total, dtype=torch.bool, device=device))

    # prefill units: a prompt and the sample indices of the rows that share its cache
    shared = group_size if share_prefill else 1
    units = [(p, range(s, s + shared)) for p in range(len(prompt_ids)) for s in range(0, group_size, shared)]
    units.sort(key=lambda unit: len(prompt_ids[unit[0]]))
    per_batch = max(1, (batch_size or rows_total) // shared)
    dtype = compute_dtype(params.dtype)
    if dtype is None and torch.is_autocast_enabled(device.type):  # called in mixed precision: decode in its dtype
        dtype = torch.get_autocast_dtype(device.type)
    was_training = model.training
    model.eval()
    forwards = 0
    # one decoder (its KV cache, packed weights) serves every batch of this call; its cache has room for the drafts
    # (a row's own drafts stop at max_new_tokens, but a row is padded to the widest row's drafts)
    try:
        with torch.autocast(device.type, enabled=False):  # the decoder computes in ``dtype`` itself
            max_len = max(map(len, prompt_ids)) + params.max_new_tokens + params.draft_tokens
            decoder = make_decoder(model, min(per_batch * shared, rows_total), max_len, backend, dtype)
            for start in range(0, len(units), per_batch):
                batch = units[start : start + per_batch]
                prompt_index = torch.tensor([p for p, samples in batch for _ in samples], device=device)
                sample_index = torch.tensor([s for _, samples in batch for s in samples], device=device)
                decoded = _Batch([prompt_ids[p] for p, _ in batch], shared, prompt_index, sample_index,
                                 rows=prompt_index * group_size + sample_index)
                forwards += _decode_batch(decoder, tokenizer, decoded, params, stops, out)
    finally:
        model.train(was_training)

    tokens, logps, lengths, ended = out.tokens, out.logps, out.lengths, out.ended
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
        num_decode_forwards=forwards,
    )


@dataclass
class _Batch:
    """Rows decoded together: ``prompts`` prefilled once each, each shared by ``shared`` consecutive rows. Each row's
    ``prompt_index`` and ``sample_index`` fix its random stream; ``rows`` are its rows of the output."""

    prompts: list[list[int]]
    shared: int
    prompt_index: torch.Tensor  # (B,)
    sample_index: torch.Tensor  # (B,)
    rows: torch.Tensor  # (B,)


@dataclass
class _Outputs:
    """What one ``sample`` call returns before trimming, one row per completion, written in place batch by batch."""

    tokens: torch.Tensor  # (N, max_new_tokens) long, pad_id where nothing was generated
    logps: torch.Tensor  # (N, max_new_tokens) float32
    lengths: torch.Tensor  # (N,) tokens up to and including the ending one
    ended: torch.Tensor  # (N,) bool: EOS or a stop string ended the row (not max_new_tokens)

    def write(self, rows, positions, chosen, chosen_logps, fresh) -> None:
        """The tokens a forward yields (``fresh``, ``(B, W)``) at their completion ``positions``."""
        out_rows = rows[:, None].expand(-1, positions.shape[1])
        self.tokens[out_rows[fresh], positions[fresh]] = chosen[fresh]
        self.logps[out_rows[fresh], positions[fresh]] = chosen_logps[fresh]

    def finish(self, rows, positions, ends, stopped) -> torch.Tensor:
        """Records the length and end flag of each row with an ending token (``ends``, ``(B, W)``) at its first one;
        returns which rows finished, ``(B,)``."""
        finished = ends.any(-1)
        first_end = ends.long().argmax(-1)  # the first ending token, for finished rows
        self.ended[rows[finished]] = stopped[finished, first_end[finished]]
        self.lengths[rows[finished]] = positions[finished, first_end[finished]] + 1
        return finished


def _decode_batch(decoder, tokenizer, batch: _Batch, params: SamplingParams, stops: torch.Tensor,
                  out: _Outputs) -> int:
    """Generate for one batch, writing each row's tokens, log-probs, length and end flag into ``out``; returns the
    number of decode forwards.

    Speculative decoding, exact: each forward feeds a row its last token plus up to k draft tokens (prompt lookup,
    ``posttrain.rollout.drafts``) and gives logits at all k + 1 positions. The token at each position is chosen from
    those logits with that position's own uniform (``choice.uniforms``), exactly as plain decoding would choose it, and
    drafts are kept while each equals the token chosen in its place. The first chosen token that differs from its draft
    is kept too, so a forward yields 1 .. k + 1 tokens, and they are the tokens plain decoding yields (up to floating
    point rounding of a wider forward). No draft (k = 0) is plain decoding.
    """
    device = out.tokens.device
    rows = batch.rows  # active batch slot -> output row
    keys = row_keys(params.seed, batch.prompt_index + params.prompt_offset, batch.sample_index)
    done = torch.zeros(len(rows), dtype=torch.long, device=device)  # tokens emitted so far, per active row
    drafter = _start_drafter(decoder, batch, params)

    logits = decoder.prefill(batch.prompts, batch.shared)[:, None]  # (B, W, V): W = 1 + the drafts fed last time
    drafts = torch.empty(len(rows), 0, dtype=torch.long, device=device)  # -1 where a row had fewer drafts
    forwards = 0
    while True:
        width = logits.shape[1]
        offsets = torch.arange(width, device=device)
        positions = done[:, None] + offsets  # (B, W): completion position of the token chosen from each logit
        chosen, chosen_logps = choose_tokens(logits.flatten(0, 1), keys.repeat_interleave(width), positions.flatten(),
                                             params.temperature, params.top_k, params.top_p)
        chosen, chosen_logps = chosen.view(-1, width), chosen_logps.view(-1, width)
        accepted = (chosen[:, :-1] == drafts).long().cumprod(-1).sum(-1)  # drafts kept before the first miss
        fresh = offsets[None, :] <= accepted[:, None]  # (B, W): the tokens this forward yields
        out.write(rows, positions, chosen, chosen_logps, fresh)
        stopped = _stopped(tokenizer, params, stops, chosen, fresh, positions, out, rows)
        ends = stopped | (fresh & (positions == params.max_new_tokens - 1))
        finished = out.finish(rows, positions, ends, stopped)
        if finished.all():
            return forwards

        emitted = accepted + 1
        if drafter is not None:
            for row, new, count in zip(rows.tolist(), chosen.tolist(), emitted.tolist()):
                drafter.extend(row, new[:count])
        if width > 1:
            decoder.rewind(width - emitted)  # fed: the last token and W - 1 drafts; valid: it and the kept drafts
        last = chosen.gather(-1, accepted[:, None]).squeeze(-1)  # the newest token, not yet fed to the model
        done += emitted
        if finished.any():
            order = compaction_order(finished)
            rows, keys, done, last = rows[order], keys[order], done[order], last[order]
            decoder.reorder(order)
        drafts = _propose(drafter, rows, done, params, len(rows))
        fed = torch.cat([last[:, None], drafts.clamp_min(0)], dim=1)  # a row short of drafts is padded with token 0
        logits = decoder.step(fed)
        forwards += 1


def _start_drafter(decoder, batch: _Batch, params: SamplingParams) -> PromptLookupDrafter | None:
    """A prompt-lookup drafter that knows each row's prompt, when drafts are asked for and the decoder can rewind."""
    if not (params.draft_tokens and decoder.can_rewind):
        return None
    drafter = PromptLookupDrafter()
    for row, prompt_row in zip(batch.rows.tolist(), (p for p in batch.prompts for _ in range(batch.shared))):
        drafter.start(row, prompt_row)
    return drafter


def _stopped(tokenizer, params: SamplingParams, stops, chosen, fresh, positions, out: _Outputs, rows) -> torch.Tensor:
    """``(B, W)`` bool: the fresh tokens that end their row, an EOS id (``stops``) or the last token of a stop string
    (found by decoding the few tokens that can hold one)."""
    stopped = torch.isin(chosen, stops) & fresh
    if params.stop_strings:
        window = 4 * max(len(s) for s in params.stop_strings) + 2  # tokens that can hold a stop string
        candidates, written, at = fresh.nonzero().tolist(), out.tokens[rows].tolist(), positions.tolist()
        tails = tokenizer.batch_decode([written[b][max(0, at[b][j] + 1 - window) : at[b][j] + 1]
                                        for b, j in candidates], skip_special_tokens=True)
        for (b, j), tail in zip(candidates, tails):
            stopped[b, j] |= first_stop_end(tail, params.stop_strings) is not None
    return stopped


# Positions (rows x fed tokens) one verifying forward may hold. A decode forward of a small model costs about the same
# up to ~16 positions and grows beyond (docs/benchmarks.md), so drafts are worth it when few rows are left, and with
# 16 rows they would slow every step for the few drafts that are kept.
VERIFY_POSITIONS = 16


def _propose(drafter, rows, done, params, num_rows: int) -> torch.Tensor:
    """Draft tokens ``(B, k)`` for the active rows, -1 where a row has fewer; ``k`` shrinks as rows grow."""
    budget = 0 if drafter is None else min(params.draft_tokens, VERIFY_POSITIONS // num_rows - 1)
    if budget <= 0:
        return torch.empty(num_rows, 0, dtype=torch.long, device=rows.device)
    room = (params.max_new_tokens - 1 - done).tolist()  # the token after the last draft must still fit
    proposals = [drafter.propose(row, min(budget, r)) for row, r in zip(rows.tolist(), room)]
    width = max(map(len, proposals))
    return torch.tensor([p + [-1] * (width - len(p)) for p in proposals], dtype=torch.long, device=rows.device)
