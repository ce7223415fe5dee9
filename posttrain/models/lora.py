"""LoRA adapters via peft (Hu et al. 2021, https://arxiv.org/abs/2106.09685): W x + (alpha / r) B A x, B = 0 at init."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = field(default=16, metadata={"min": 1})
    alpha: float = field(default=32.0, metadata={"min": 0})
    dropout: float = field(default=0.05, metadata={"min": 0, "max": 1})
    # "all-linear": every linear layer of the decoder except the output head (QLoRA's recommendation).
    target_modules: list[str] | str = "all-linear"
    save_merged: bool = False  # also write final/merged/: the adapter folded into a plain transformers model


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
