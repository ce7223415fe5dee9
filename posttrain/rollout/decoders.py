"""Incremental decoders: prefill prompts once, then one token per row per step, with a KV cache.

Two implementations share one small interface, used by ``posttrain.rollout.sampling``:

- ``prefill(prompts, group_size) -> logits (P * G, V)``: run each prompt (a list of token ids) once and give its cache
  to its ``G`` rows (rows of a group are contiguous);
- ``step(tokens (B, W)) -> logits (B, W, V)``: append ``W`` tokens to each active row (``W > 1``: a token and the
  drafts that speculative decoding verifies);
- ``rewind(counts (B,))``: forget each row's last ``counts`` tokens (rejected drafts); only when ``can_rewind``;
- ``reorder(order)``: keep only the listed rows, row ``j`` becoming old row ``order[j]`` (finished rows are dropped
  so they stop costing compute).

``LlamaDecoder`` is the fast path for Llama-architecture models (SmolLM2, Llama 2/3, TinyLlama...): a lean loop over the
Hugging Face module's own submodules (so LoRA layers and ``adapters_disabled`` apply, and weights updated by training
are used as they are) with a KV cache allocated once; it can rewind, so it verifies drafts. ``HFDecoder`` works with
any causal LM through its ``forward`` and its KV ``Cache``; it is slower (transformers' per-step mask building and
growing cache) but general.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from posttrain.models.forward import causal_lm
from posttrain.rollout.packed import fused_linear, mlp_function, single_linear


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids (P, T), pad_lengths (P,))``: prompts right-aligned so that generation starts at one column."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
    pads = torch.tensor([width - len(p) for p in prompts], dtype=torch.long)
    return ids.to(device), pads.to(device)


def supports_llama_path(model) -> bool:
    """True for Llama-style decoders that ``LlamaDecoder`` reproduces exactly: the module names it calls exist and the
    architecture adds nothing it skips (no sliding window, no q/k norms, plain RoPE module)."""
    lm = causal_lm(model)
    config = lm.config
    inner = getattr(lm, "model", None)
    if config.model_type not in ("llama", "mistral", "qwen2") or inner is None or not hasattr(inner, "rotary_emb"):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    attn = inner.layers[0].self_attn
    if not all(hasattr(attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")) or hasattr(attn, "q_norm"):
        return False
    # it joins the projections' weights into packed matrices: plain tensors only (not torchao's quantized ones)
    weight = getattr(attn.q_proj, "weight", None)
    return weight is None or type(weight.data) in (torch.Tensor, torch.nn.Parameter)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, out: torch.Tensor | None = None):
    """RoPE as Hugging Face's Llama applies it, ``x cos + rotate_half(x) sin`` with ``rotate_half(x) = (-x2, x1)``,
    in four kernels instead of five, for queries and keys at once (the decoder rotates both in one call):
    ``(x2, x1)`` is the two halves flipped, and the minus sign lives in ``signed_sin = (-s1, s2)``. The same
    products and sums, so the same floats (``addcmul`` would fuse them into one rounding and no longer match the
    model's own forward). ``out=x`` rotates in place."""
    flipped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # a copy, so writing ``out`` cannot change it
    return torch.add(x * cos, flipped * signed_sin, out=out)


def norm_function(norm: torch.nn.Module):
    """``x -> norm(x)``. A float32 Llama RMSNorm runs as one fused ``F.rms_norm`` (the same floats: ``w * x *
    rsqrt(mean(x^2) + eps)``), instead of the module's six kernels; any other norm runs as itself."""
    weight, eps = getattr(norm, "weight", None), getattr(norm, "variance_epsilon", None)
    if not type(norm).__name__.endswith("RMSNorm") or eps is None or weight is None or weight.dtype != torch.float32:
        return norm
    shape = (weight.shape[0],)
    return lambda x: F.rms_norm(x, shape, weight, eps) if x.dtype == torch.float32 else norm(x)


def common_prefix_length(prompts: list[list[int]]) -> int:
    """Tokens all prompts start with, leaving each at least one token of its own (its last position gives logits)."""
    shortest = min(map(len, prompts))
    for index, token in enumerate(prompts[0][: shortest - 1]):
        if any(p[index] != token for p in prompts):
            return index
    return shortest - 1


class LlamaDecoder:
    """Llama decoding over a KV cache allocated once: ``(layers, 2, rows, kv_heads, max_len, head_dim)``.

    Row ``b`` keeps its tokens in slots ``0 .. n_b - 1`` (prompt, then completion) and its RoPE position is its slot,
    so no padding sits inside a row and a decode step writes each row at its own slot ``n_b``. Prefill is shared at two
    levels: the prefix that all prompts of the batch start with (a chat template's system prompt) runs once and is
    copied to every row, and each prompt's remaining tokens run once for its whole group.

    Grouped-query attention runs without copying K/V: the ``n_rep`` query heads that share a KV head are laid out as
    ``n_rep`` times more query rows against that head.

    ``dtype``: what the products, attention and KV cache compute in (None: the model's dtype). With bfloat16 for a
    float32 model the residual stream and the norms stay in float32 and the logits come back in float32, but they are
    a rounded model's: sampling log-probs then differ from the trainer's (``SamplingParams.dtype``).
    """

    can_rewind = True

    def __init__(self, model, max_rows: int, max_len: int, dtype: torch.dtype | None = None):
        lm = causal_lm(model)
        self.inner = lm.model
        config = lm.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.n_rep = self.heads // self.kv_heads
        self.device = self.inner.embed_tokens.weight.device
        self.dtype = dtype or self.inner.embed_tokens.weight.dtype
        # zeros, not empty: masked slots still enter attention as 0 * value, and uninitialised memory can hold NaN
        self.cache = torch.zeros(len(self.inner.layers), 2, max_rows, self.kv_heads, max_len, self.head_dim,
                                 device=self.device, dtype=self.dtype)
        self.lengths = torch.zeros(max_rows, dtype=torch.long, device=self.device)  # n_b: filled slots per row
        self.rows = 0
        attns = [layer.self_attn for layer in self.inner.layers]
        self.qkv = [fused_linear([a.q_proj, a.k_proj, a.v_proj], max_rows, self.dtype) for a in attns]
        self.out_proj = [single_linear(a.o_proj, max_rows, self.dtype) for a in attns]
        self.mlp = [mlp_function(layer.mlp, max_rows, self.dtype) for layer in self.inner.layers]
        self.attn_norms = [norm_function(layer.input_layernorm) for layer in self.inner.layers]
        self.mlp_norms = [norm_function(layer.post_attention_layernorm) for layer in self.inner.layers]
        self.final_norm = norm_function(self.inner.norm)
        half = self.head_dim // 2
        self.sin_sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(self.device, self.dtype)
        head, dtype = single_linear(lm.lm_head, max_rows, self.dtype), self.dtype
        # no ``self`` in the closure: a reference cycle would keep the packed weights alive until the garbage collector
        # runs, so the next call's copy could not reuse their memory
        self.head = lambda x: head(x.to(dtype)).float()

    def prefill(self, prompts: list[list[int]], group_size: int) -> torch.Tensor:
        self.rows = len(prompts) * group_size
        shared = common_prefix_length(prompts)
        if shared:
            ids = torch.tensor([prompts[0][:shared]], device=self.device)
            self._forward(ids, 0, self._causal_mask(1, 0, shared), fanout=self.rows)
        width = max(map(len, prompts)) - shared
        ids = torch.tensor([p[shared:] + [0] * (width - len(p) + shared) for p in prompts], device=self.device)
        hidden = self._forward(ids, shared, self._causal_mask(len(prompts), shared, width), fanout=group_size)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        last = hidden[torch.arange(len(prompts), device=self.device), lengths - shared - 1]  # (P, H)
        self.lengths[: self.rows] = lengths.repeat_interleave(group_size)
        return self.head(self.final_norm(last)).repeat_interleave(group_size, dim=0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        width = tokens.shape[1]
        slots = self.lengths[: self.rows, None] + torch.arange(width, device=self.device)  # (B, W): where each goes
        span = int(slots[:, -1].max()) + 1
        mask = torch.arange(span, device=self.device)[None, None, None, :] <= slots[:, None, :, None]
        hidden = self._forward(tokens, slots, mask, slots=slots)
        self.lengths[: self.rows] += width
        return self.head(self.final_norm(hidden))

    def rewind(self, counts: torch.Tensor) -> None:
        """The slots of forgotten tokens are simply overwritten later: a row attends to its first ``n_b`` only."""
        self.lengths[: self.rows] -= counts

    def reorder(self, order: torch.Tensor) -> None:
        """Keep rows ``order`` in that order. Only rows whose place changes are copied (the sampler moves surviving
        rows from the end into the holes finished rows leave, so that is one copy per finished row at most)."""
        moved = order != torch.arange(len(order), device=order.device)
        if moved.any():
            dest, src = moved.nonzero().squeeze(1), order[moved]
            span = int(self.lengths[: self.rows].max())
            self.cache[:, :, dest, :, :span] = self.cache[:, :, src, :, :span]
            self.lengths[dest] = self.lengths[src]
        self.rows = len(order)

    def _causal_mask(self, rows: int, start: int, width: int) -> torch.Tensor:
        """``(rows, 1, width, start + width)``: query ``start + i`` sees slots up to its own."""
        query = torch.arange(start, start + width, device=self.device)[:, None]
        return (torch.arange(start + width, device=self.device)[None, :] <= query).expand(rows, 1, width, -1)

    def _forward(self, input_ids, positions, mask, fanout: int = 1, slots: torch.Tensor | None = None):
        """Decoder layers on ``input_ids (R, T)`` at RoPE ``positions`` (an int: the slot of the first column, the same
        for every row; or ``(R, T)``); ``mask (R, 1, T, S)``. Keys and values go to slots ``positions ..`` of
        ``fanout`` consecutive cache rows per input row, or to each row's own slots ``slots (R, T)``."""
        batch, width = input_ids.shape
        start = positions if isinstance(positions, int) else 0
        if isinstance(positions, int):
            positions = torch.arange(start, start + width, device=self.device).expand(batch, -1)
        span = mask.shape[-1]
        x = self.inner.embed_tokens(input_ids)
        cos, sin = self.inner.rotary_emb(x, positions)
        cos, sin = cos[:, :, None].to(self.dtype), sin[:, :, None].to(self.dtype)  # (R, T, 1, D): over heads
        signed_sin = sin * self.sin_sign
        if width > 1:  # the n_rep query heads of a KV head become n_rep * T query rows; one mask row each
            mask = mask.unsqueeze(2).expand(-1, -1, self.n_rep, -1, -1).reshape(batch, 1, self.n_rep * width, span)
        row_index = torch.arange(batch, device=self.device)
        heads, rotated = self.heads, self.heads + self.kv_heads
        for index, layer in enumerate(self.inner.layers):
            h = self.attn_norms[index](x).to(self.dtype)
            qkv = self.qkv[index](h).view(batch, width, rotated + self.kv_heads, self.head_dim)  # (R, T, heads, D)
            qk = qkv[:, :, :rotated]  # queries and keys, rotated together
            rotate(qk, cos, signed_sin, out=qk)
            kv = qkv[:, :, heads:].unflatten(2, (2, self.kv_heads))  # (R, T, 2, kv, D): keys and values
            cache = self.cache[index, :, : batch * fanout]
            if slots is not None:  # (2, B, kv, S, D)[:, b, :, slots[b, t]] = (B, T, 2, kv, D)
                cache[:, row_index[:, None], :, slots] = kv
            else:  # one input row's keys and values go to its ``fanout`` cache rows at once
                grouped = cache.view(2, batch, fanout, self.kv_heads, -1, self.head_dim)
                grouped[:, :, :, :, start : start + width] = kv.permute(2, 0, 3, 1, 4)[:, :, None]
                cache = grouped[:, :, 0]
            q = qkv[:, :, :heads].transpose(1, 2).reshape(batch, self.kv_heads, self.n_rep * width, self.head_dim)
            out = F.scaled_dot_product_attention(q, cache[0, :, :, :span], cache[1, :, :, :span], attn_mask=mask,
                                                 scale=layer.self_attn.scaling)
            out = out.reshape(batch, heads, width, self.head_dim).transpose(1, 2).reshape(batch, width, -1)
            x = x + self.out_proj[index](out)
            x = x + self.mlp[index](self.mlp_norms[index](x).to(self.dtype))
        return x


class HFDecoder:
    """Any causal LM through ``model(input_ids, attention_mask, position_ids, cache)``. Its cache cannot
    forget a different number of tokens per row, so it decodes one token per step (no drafts). Another ``dtype`` than
    the model's runs through autocast."""

    can_rewind = False

    def __init__(self, model, max_rows: int, max_len: int, dtype: torch.dtype | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        parameters = inspect.signature(causal_lm(model).forward).parameters
        self.keep_last = "logits_to_keep" in parameters
        # transformers >= 5.25 names the KV cache `cache` (a Cache object, in and out); before, `past_key_values`
        self.cache_name = "cache" if "cache" in parameters else "past_key_values"
        self.dtype = dtype if dtype not in (None, next(model.parameters()).dtype) else None

    def _call(self, input_ids, position_ids, past=None):
        extra = {"logits_to_keep": 1} if self.keep_last else {}
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(input_ids=input_ids, attention_mask=self.attention_mask, position_ids=position_ids,
                             use_cache=True, **{self.cache_name: past}, **extra)
        self.past = out[self.cache_name]  # a DynamicCache, which the model creates at prefill
        return out.logits[:, -1].float()

    def prefill(self, prompts: list[list[int]], group_size: int) -> torch.Tensor:
        input_ids, pad_lengths = left_pad(prompts, 0, self.device)
        width = input_ids.shape[1]
        self.attention_mask = (torch.arange(width, device=self.device)[None, :] >= pad_lengths[:, None]).long()
        position_ids = (self.attention_mask.cumsum(-1) - 1).clamp_min(0)
        logits = self._call(input_ids, position_ids)
        expand = torch.arange(len(input_ids), device=self.device).repeat_interleave(group_size)
        self.past.reorder_cache(expand)
        self.attention_mask = self.attention_mask[expand]
        self.positions = (width - pad_lengths).repeat_interleave(group_size)
        return logits[expand]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != 1:
            raise ValueError("HFDecoder decodes one token per row per step")
        self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
        logits = self._call(tokens, self.positions[:, None], self.past)
        self.positions = self.positions + 1
        return logits[:, None]

    def reorder(self, order: torch.Tensor) -> None:
        self.past.reorder_cache(order)
        self.attention_mask, self.positions = self.attention_mask[order], self.positions[order]


def make_decoder(model, max_rows: int, max_len: int, backend: str = "auto", dtype: torch.dtype | None = None):
    """``backend``: ``auto`` (the Llama fast path when the architecture allows, else the generic one), ``llama``,
    or ``hf``. ``dtype``: what the decoder computes in (None: the model's dtype)."""
    if backend not in ("auto", "llama", "hf"):
        raise ValueError(f"unknown rollout backend {backend!r}: expected auto, llama or hf")
    if backend == "llama" or (backend == "auto" and supports_llama_path(model)):
        if not supports_llama_path(model):
            raise ValueError(f"{type(causal_lm(model)).__name__} is not a Llama-style model; use backend='hf'")
        return LlamaDecoder(model, max_rows, max_len, dtype)
    return HFDecoder(model, max_rows, max_len, dtype)
