"""LoRA adapters via peft (Hu et al. 2021, https://arxiv.org/abs/2106.09685): W x + (alpha / r) B A x, B = 0 at init."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from posttrain.config import option


@dataclass
class LoraSettings:
    enabled: bool = option(False, help="train LoRA adapters instead of the full weights (the base is frozen)")
    r: int = option(16, min=1, help="rank of the adapters' update B A")
    alpha: float = option(32.0, min=0, help="scale of the update: W x + (alpha / r) B A x")
    dropout: float = option(0.05, min=0, max=1, help="dropout on the adapters' input")
    target_modules: list[str] | str = option("all-linear", help="the layers that get adapters: module names, or "
                                                                "all-linear (every linear layer of the decoder except "
                                                                "the output head, QLoRA's recommendation)")
    save_merged: bool = option(False, help="also write final/merged/: the adapter folded into a plain transformers "
                                           "model")


def apply_lora(model, settings: LoraSettings, gradient_checkpointing: bool = False):
    """Wrap ``model`` with trainable LoRA adapters; the base weights are frozen. k-bit models are prepared first."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config")


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model's behaviour inside the block: under LoRA the reference model costs no second copy."""
    if is_peft_model(model):
        with model.disable_adapter():
            yield model
    else:
        yield model
