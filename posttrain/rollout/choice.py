"""From next-token logits to a token: temperature, top-k, top-p, and per-row reproducible randomness.

Every function here is pure (tensors in, tensors out). The randomness is *counter-based*: the uniform number that picks
row r's token at step t is a hash of ``(seed, prompt index, sample index, t)``, not a draw from a shared generator.
So a row's tokens do not depend on which other rows share its batch, on the order rows sit in after finished ones are
dropped, or on the device: sampling G completions of a prompt from one shared prefill gives exactly the tokens that
sampling each (prompt, sample index) alone would give (``tests/rollout/test_sampling.py``).

Sampling uses the inverse CDF: token = the first index whose cumulative probability exceeds ``u ~ U(0, 1)``. That needs
one random number per row and step, where Gumbel-max needs one per vocabulary entry (49152 for SmolLM2).

The sampling log-prob of a token is ``log softmax(logits / T)[token]``, taken *before* top-k / top-p truncation: the
quantity a trainer recomputes from temperature-scaled logits. Temperature 0 means greedy (argmax) and its log-prob is
``log softmax(logits)[token]`` (temperature 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Chris Wellons' "lowbias32") on int64 tensors holding values in [0, 2^32).

    Products may wrap past 2^63; the low 32 bits, which are all we keep, are the same either way (two's complement),
    on CPU and CUDA alike.
    """
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def row_keys(seed: int, prompt_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row, from the sampling seed, the row's prompt index and its sample index in the group."""
    low, high = torch.tensor(seed & _MASK32), torch.tensor((seed >> 32) & _MASK32)
    base = mix32(low ^ mix32(high + 0x51ED27)).to(prompt_index.device)
    return mix32(mix32(base + prompt_index.long()) + 0x9E3779B9 * sample_index.long())


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """``u`` in [0, 1) per row for the token at position ``step`` of its completion, float64 with 32 random bits.

    The largest value is ``1 - 2**-32``, so ``u * total < total`` exactly in float64 (``inverse_cdf_choice`` relies
    on it).
    """
    bits = mix32(mix32(keys + (step * 0x632BE5AB & _MASK32)) ^ 0x2545F491)
    return bits.double() * 2.0**-32


def top_k_top_p_filter(probs: torch.Tensor, top_k: int = 0,
                       top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``probs`` ``(B, V)``, possibly scaled by a per-row constant. Keep the ``top_k`` most likely tokens, then the
    smallest prefix of them (by decreasing probability) whose mass reaches ``top_p`` (Holtzman et al. 2019,
    https://arxiv.org/abs/1904.09751). Returns ``(kept_probs, token_ids)``: ``kept_probs`` ``(B, K)`` unnormalised,
    zero where dropped, and the vocabulary ids of its columns (``None`` when nothing is filtered: the columns are then
    the vocabulary itself, in order).
    """
    if top_k <= 0 and top_p >= 1.0:
        return probs, None
    if 0 < top_k < probs.shape[-1]:
        kept, ids = probs.topk(top_k, dim=-1)  # sorted, descending
    else:
        kept, ids = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        mass_before = kept.cumsum(-1) - kept  # the first token always survives: its mass before is 0
        kept = kept.masked_fill(mass_before >= top_p * kept.sum(-1, keepdim=True), 0.0)
    return kept, ids


def inverse_cdf_choice(weights: torch.Tensor, u: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Column index drawn with probability proportional to ``weights`` ``(B, K)`` (non-negative, not necessarily
    normalised), using ``u`` ``(B,)`` in [0, 1): the first column whose cumulative weight exceeds ``u * total``.

    Two levels, so that no cumulative sum runs along all ``K`` columns (a float32 one would round away the smallest
    probabilities, a float64 one needs a ``(B, K)`` copy): block sums of ``block`` columns pick a block, then a
    float64 cumulative sum inside that block, rescaled to the block's sum, picks the column. Weight-0 columns are
    never chosen.
    """
    rows, width = weights.shape
    pad = -width % block
    blocks = F.pad(weights, (0, pad)).view(rows, -1, block) if pad else weights.view(rows, -1, block)
    block_sums = blocks.sum(-1).double()  # (B, K / block)
    block_cdf = block_sums.cumsum(-1)
    target = u * block_cdf[:, -1]  # < total: see ``uniforms``
    chosen = torch.searchsorted(block_cdf, target[:, None], right=True).clamp_max(block_cdf.shape[1] - 1)  # (B, 1)
    offset = target[:, None] - (block_cdf.gather(-1, chosen) - block_sums.gather(-1, chosen))  # in [0, block sum)
    inner = blocks.gather(1, chosen[:, :, None].expand(-1, -1, block)).squeeze(1)  # (B, block)
    inner_cdf = inner.double().cumsum(-1)
    inner_cdf *= block_sums.gather(-1, chosen) / inner_cdf[:, -1:]
    column = torch.searchsorted(inner_cdf, offset, right=True)
    # rounding can leave the offset a hair above the block's last cumulative value: take its last nonzero column
    last_nonzero = ((inner > 0) * torch.arange(1, block + 1, device=inner.device)).argmax(-1, keepdim=True)
    return (chosen * block + torch.minimum(column, last_nonzero)).squeeze(-1)


def choose_tokens(logits: torch.Tensor, keys: torch.Tensor, step: int, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens ``(B,)`` and their sampling log-probs ``(B,)`` (float32) from logits ``(B, V)``.

    ``logps = log softmax(logits / T)[token]`` before truncation (T = 1 when greedy, i.e. ``temperature == 0``).
    """
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, logits.gather(-1, tokens[:, None]).squeeze(-1) - logits.logsumexp(-1)
    scaled = logits / temperature if temperature != 1.0 else logits
    peak = scaled.amax(-1, keepdim=True)
    weights = (scaled - peak).exp_()  # the probabilities times a per-row constant: all the draw needs
    kept, ids = top_k_top_p_filter(weights, top_k, top_p)
    column = inverse_cdf_choice(kept, uniforms(keys, step))
    tokens = column if ids is None else ids.gather(-1, column[:, None]).squeeze(-1)
    log_z = peak.squeeze(-1) + weights.sum(-1).log()
    return tokens, scaled.gather(-1, tokens[:, None]).squeeze(-1) - log_z
