"""The forward pass that training uses: decoder hidden states -> token log-probs at loss positions only.

``model(...)`` on a causal LM returns ``(B, T, V)`` logits; we call the decoder and the output head separately so
the vocabulary projection runs in chunks over the positions that carry loss (see ``posttrain.math.logprobs``).

In training, both ends of the model add their weight gradients straight into ``.grad`` (``accumulate_grad_in_place``
and ``_EmbeddingIntoGrad``): a plain backward makes a dense ``(V, H)`` gradient for the input embedding (113 MB for
SmolLM2, although a batch touches a few hundred rows) and another for the output head, and when the two are tied
autograd keeps the head's one alive through the whole backward pass before summing them into ``.grad``.
"""

from __future__ import annotations

import torch

from posttrain.math.logprobs import DEFAULT_CHUNK_SIZE, TokenLogps, grad_buffer, sequence_token_logps
from posttrain.models.lora import is_peft_model
from posttrain.models.quantize import dequantized


def causal_lm(model):
    """The ``*ForCausalLM`` module inside a peft wrapper (LoRA layers are injected in place, so they still run)."""
    return model.get_base_model() if is_peft_model(model) else model


class _EmbeddingIntoGrad(torch.autograd.Function):
    """``weight[input_ids]`` whose backward adds the rows it used into ``weight.grad`` (``index_add_``, as torch's own
    embedding backward does, but into ``.grad`` instead of a dense zero-filled ``(V, H)`` temporary)."""

    @staticmethod
    def forward(ctx, input_ids, weight, padding_idx):
        ctx.save_for_backward(input_ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return torch.nn.functional.embedding(input_ids, weight)

    @staticmethod
    def backward(ctx, grad_output):
        (input_ids,) = ctx.saved_tensors
        ids, rows = input_ids.reshape(-1), grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.padding_idx is not None:  # nn.Embedding never updates its padding row
            keep = ids != ctx.padding_idx
            ids, rows = ids[keep], rows[keep]
        grad = grad_buffer(ctx.weight)
        grad.index_add_(0, ids, rows.to(grad.dtype))
        return None, None, None


def _input_embeddings(lm, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Input embeddings through ``_EmbeddingIntoGrad`` when training a plain fp32 ``nn.Embedding``; None otherwise (the
    decoder then embeds by itself: frozen or LoRA-wrapped embeddings, or no gradient needed)."""
    embed = lm.get_input_embeddings()
    if not (torch.is_grad_enabled() and type(embed) is torch.nn.Embedding and embed.weight.requires_grad
            and embed.weight.is_leaf):
        return None
    if embed.max_norm is not None or embed.scale_grad_by_freq or embed.sparse or embed.weight.dtype != torch.float32:
        return None
    return _EmbeddingIntoGrad.apply(input_ids, embed.weight, embed.padding_idx)


def hidden_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last hidden states ``(B, T, H)`` (after the final norm). Three layouts:

    - padded rows: the 2D ``attention_mask``;
    - packed rows: ``position_ids`` that restart at 0 and no mask, from which transformers builds a block-diagonal
      causal mask;
    - rows with a mask of their own (completions sharing their prompt, ``posttrain.data.shared_prompts``):
      ``position_ids`` and a boolean ``attention_mask_4d`` ``(B, 1, T, T)``, True where a query may attend to a
      key, which transformers passes to the attention as given."""
    lm = causal_lm(model)
    decoder = lm.get_decoder()
    embeds = _input_embeddings(lm, batch["input_ids"])
    inputs = {"input_ids": batch["input_ids"]} if embeds is None else {"inputs_embeds": embeds}
    if "attention_mask_4d" in batch:
        mask = attention_mask_for(lm, batch["attention_mask_4d"])
        out = decoder(**inputs, attention_mask=mask, position_ids=batch["position_ids"], use_cache=False)
    elif "position_ids" in batch:
        out = decoder(**inputs, position_ids=batch["position_ids"], use_cache=False)
    else:
        out = decoder(**inputs, attention_mask=batch["attention_mask"], use_cache=False)
    return out.last_hidden_state


def attention_mask_for(lm, allowed: torch.Tensor) -> torch.Tensor:
    """A boolean ``(B, 1, T, T)`` mask in the form the model's attention takes a ready-made mask: SDPA takes it as
    is, eager attention adds it to the scores (0 where allowed, the dtype's minimum elsewhere)."""
    implementation = getattr(lm.config, "_attn_implementation", None)
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        dtype = lm.get_input_embeddings().weight.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    raise ValueError(
        f"completions that share their prompt need a custom attention mask, which {implementation!r} attention "
        "does not take; set pack_pairs: false (DPO family) or pack_groups: false (GRPO, RLOO, REINFORCE) to score "
        "padded rows with this model")


def token_logps(
    model,
    batch: dict[str, torch.Tensor],
    mask_key: str = "loss_mask",
    with_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> tuple[TokenLogps, torch.Tensor]:
    """log pi(y_t | y_<t) at the positions ``batch[mask_key]`` marks, as ``(B, T-1)`` tensors, and the shifted mask.

    ``temperature`` T scores the distribution softmax(logits / T) that a sampler at temperature T draws from (RL
    methods train on what they sampled); logits / T = (h / T) W^T + b / T, so the hidden states are scaled instead.

    A batch with ``packed_*`` keys (``posttrain.data.shared_prompts.with_shared_prompts``: completions sharing their
    prompt) runs the model on the packed rows and returns the values in the padded layout.

    A model sharded by FSDP (``posttrain.engine.fsdp``) runs this computation as a forward of its root module
    (``as_root_forward``)."""
    return as_root_forward(model, unsharded_token_logps, model, batch, mask_key, with_entropy, chunk_size, temperature)


SHARDED_FORWARD = "posttrain_root_forward"  # the root module's FSDP forward method, when the model is sharded


def as_root_forward(model, function, *args):
    """``function(*args)``. On a model sharded by FSDP (``posttrain.engine.fsdp``) it runs as a forward method of the
    root module (``SHARDED_FORWARD``): posttrain calls the decoder and the heads itself, never the model's own
    ``forward``, so this is what makes FSDP gather the root's weights (input embedding, final norm, output or score
    head) around the computation and reduce-scatter their gradients after backward."""
    sharded = causal_lm(model).__dict__.get(SHARDED_FORWARD)
    return function(*args) if sharded is None else sharded(function, *args)


def unsharded_token_logps(model, batch, mask_key="loss_mask", with_entropy=False, chunk_size=DEFAULT_CHUNK_SIZE,
                          temperature=1.0) -> tuple[TokenLogps, torch.Tensor]:
    """``token_logps`` itself, on parameters that are all present (not sharded, or gathered by FSDP)."""
    if "packed_input_ids" in batch and mask_key == "loss_mask":
        return _packed_token_logps(model, batch, with_entropy, chunk_size, temperature)
    return logps_from_hidden(model, hidden_states(model, batch), batch, mask_key, with_entropy, chunk_size, temperature)


def _packed_token_logps(model, batch, with_entropy, chunk_size, temperature) -> tuple[TokenLogps, torch.Tensor]:
    packed = {"input_ids": batch["packed_input_ids"], "position_ids": batch["packed_position_ids"],
              "attention_mask_4d": batch["packed_attention_mask_4d"], "loss_mask": batch["packed_loss_mask"]}
    stats, packed_mask = unsharded_token_logps(model, packed, "loss_mask", with_entropy, chunk_size, temperature)
    mask = batch["loss_mask"][:, 1:].bool()
    index = batch["unpack_index"]
    if index.numel() != int(mask.sum()):
        raise ValueError(f"packed batch: {index.numel()} packed targets for {int(mask.sum())} padded ones")

    def unpack(values: torch.Tensor | None) -> torch.Tensor | None:
        if values is None:
            return None
        flat = values.new_zeros(mask.numel()).index_copy(0, index, values[packed_mask])
        return flat.view(mask.shape)

    return TokenLogps(unpack(stats.logps), unpack(stats.entropy), unpack(stats.is_argmax)), mask


def logps_from_hidden(
    model,
    hidden: torch.Tensor,
    batch: dict[str, torch.Tensor],
    mask_key: str = "loss_mask",
    with_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> tuple[TokenLogps, torch.Tensor]:
    """``token_logps`` from decoder hidden states ``(B, T, H)`` already computed (e.g. shared with a value head)."""
    lm = causal_lm(model)
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        raise NotImplementedError(f"{type(lm).__name__} rescales its logits; chunked log-probs do not support it yet")
    head = lm.get_output_embeddings()
    bias = head.bias
    if temperature != 1.0:
        hidden, bias = hidden / temperature, None if bias is None else bias / temperature
    return sequence_token_logps(
        hidden, dequantized(head.weight), batch["input_ids"], batch[mask_key], bias, chunk_size, with_entropy,
        accumulate_grad_in_place=True,
    )
