"""The forward pass that training uses: decoder hidden states -> token log-probs at loss positions only.

``model(...)`` on a causal LM returns ``(B, T, V)`` logits; we call the decoder and the output head separately so
the vocabulary projection runs in chunks over the positions that carry loss (see ``posttrain.math.logprobs``).
"""

from __future__ import annotations

import torch

from posttrain.math.logprobs import DEFAULT_CHUNK_SIZE, TokenLogps, sequence_token_logps
from posttrain.models.lora import is_peft_model


def causal_lm(model):
    """The ``*ForCausalLM`` module inside a peft wrapper (LoRA layers are injected in place, so they still run)."""
    return model.get_base_model() if is_peft_model(model) else model


def hidden_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last hidden states ``(B, T, H)`` (after the final norm). Packed batches pass ``position_ids`` and no attention
    mask, so transformers builds a block-diagonal causal mask from the restarting positions."""
    decoder = causal_lm(model).get_decoder()
    if "position_ids" in batch:
        out = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    else:
        out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.last_hidden_state


def token_logps(
    model,
    batch: dict[str, torch.Tensor],
    mask_key: str = "loss_mask",
    with_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[TokenLogps, torch.Tensor]:
    """log pi(y_t | y_<t) at the positions ``batch[mask_key]`` marks, as ``(B, T-1)`` tensors, and the shifted mask."""
    lm = causal_lm(model)
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        raise NotImplementedError(f"{type(lm).__name__} rescales its logits; chunked log-probs do not support it yet")
    head = lm.get_output_embeddings()
    return sequence_token_logps(
        hidden_states(model, batch), head.weight, batch["input_ids"], batch[mask_key], head.bias, chunk_size, with_entropy
    )
