"""Sparse upcycling (Komatsuzaki et al. 2023, https://arxiv.org/abs/2212.05055): a dense llama-architecture model
becomes a mixture of experts whose every expert starts as a copy of the layer's MLP, behind a new router.

The output is transformers' own Mixtral (same attention, norms and rotary embedding as llama; a top-k softmax router
whose k weights are renormalised to sum to 1), so the folder loads with ``AutoModelForCausalLM``, peft and posttrain
like any model. Because the experts are identical and the k weights sum to 1, the upcycled model computes exactly
the dense model's function at initialisation, whatever the router says; training then lets the experts diverge.
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.errors import ConfigError
from posttrain.io import atomic_dir


def moe_config(dense_config, num_experts: int, top_k: int, aux_loss_coef: float):
    """The MixtralConfig with the dense llama config's shapes, ``num_experts`` experts and top-``top_k`` routing."""
    from transformers import MixtralConfig

    if dense_config.model_type not in ("llama", "mistral"):
        raise ConfigError(f"--model: model_type {dense_config.model_type!r}; upcycling maps llama-architecture models "
                          "(llama, mistral) onto Mixtral")
    if getattr(dense_config, "attention_bias", False) or getattr(dense_config, "mlp_bias", False):
        raise ConfigError("--model: attention or MLP biases are set; Mixtral's layers have none")
    _check_counts(num_experts, top_k)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
            "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
            "attention_dropout", "rope_parameters")
    values = {key: getattr(dense_config, key) for key in keys if getattr(dense_config, key, None) is not None}
    return MixtralConfig(**values, num_local_experts=num_experts, num_experts_per_tok=top_k, sliding_window=None,
                         router_aux_loss_coef=aux_loss_coef, router_jitter_noise=0.0)


def _check_counts(num_experts: int, top_k: int) -> None:
    if num_experts < 1:
        raise ConfigError(f"--experts {num_experts}: expected at least 1")
    if not 1 <= top_k <= num_experts:
        raise ConfigError(f"--top-k {top_k}: expected 1 <= top-k <= --experts ({num_experts})")


def upcycle_model(dense, num_experts: int, top_k: int, seed: int = 0, aux_loss_coef: float = 0.01):
    """A ``MixtralForCausalLM`` whose experts are copies of ``dense``'s MLPs; routers ~ N(0, initializer_range^2)."""
    from transformers import MixtralForCausalLM

    config = moe_config(dense.config, num_experts, top_k, aux_loss_coef)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        moe = MixtralForCausalLM(config).to(dtype=next(dense.parameters()).dtype)
    dense_state = dense.state_dict()
    moe_state = moe.state_dict()
    with torch.no_grad():
        for name, tensor in moe_state.items():
            if ".mlp.gate.weight" in name:  # the new router keeps its random initialisation
                continue
            if name.endswith(".mlp.experts.gate_up_proj"):
                prefix = name.removesuffix("experts.gate_up_proj")
                # Mixtral's fused layout: rows [gate; up], one slice per expert
                fused = torch.cat([dense_state[prefix + "gate_proj.weight"], dense_state[prefix + "up_proj.weight"]])
                tensor.copy_(fused.expand(num_experts, *fused.shape))
            elif name.endswith(".mlp.experts.down_proj"):
                down = dense_state[name.removesuffix("experts.down_proj") + "down_proj.weight"]
                tensor.copy_(down.expand(num_experts, *down.shape))
            elif name in dense_state:
                tensor.copy_(dense_state[name])
            else:
                raise ConfigError(f"upcycling: the Mixtral tensor {name!r} has no counterpart in the dense model")
    moe.config.name_or_path = f"upcycled-{num_experts}x"
    return moe


def upcycle(model: str, out: str | Path, num_experts: int = 4, top_k: int = 2, seed: int = 0,
            aux_loss_coef: float = 0.01) -> Path:
    """Load ``model`` (a spec: folder or built-in name), upcycle it, write a plain HF folder + model card to ``out``."""
    from posttrain.models.loading import load_model
    from posttrain.models.model_card import model_card

    _check_counts(num_experts, top_k)
    dense, tokenizer = load_model(model, dtype="float32", device="cpu")
    moe = upcycle_model(dense, num_experts, top_k, seed, aux_loss_coef)
    out = Path(out)
    with atomic_dir(out) as tmp:
        moe.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        dense_params = sum(p.numel() for p in dense.parameters())
        moe_params = sum(p.numel() for p in moe.parameters())
        (tmp / "README.md").write_text(model_card(
            f"Sparse upcycled model ({num_experts} experts, top-{top_k})",
            f"Made by `posttrain upcycle` (Komatsuzaki et al. 2023) from `{model}`: every MLP copied into "
            f"{num_experts} experts behind a new top-{top_k} router (seed {seed}), as transformers' Mixtral. Until "
            "trained it computes the dense model's function.",
            base_model=str(model), tags=["moe", "upcycling"],
            sections={"Size": f"- parameters: {moe_params:,} ({dense_params:,} dense)\n"
                              f"- router_aux_loss_coef: {aux_loss_coef}"}))
    return out
