"""Models: load from a spec, LoRA/QLoRA, save what plain transformers/peft load."""

from posttrain.models.loading import build_tiny_model, load_model, load_tokenizer, resolve_device, resolve_dtype
from posttrain.models.lora import LoraSettings, adapters_disabled, apply_lora, is_peft_model
from posttrain.models.saving import save_model
from posttrain.models.specs import BUILTIN_SPECS, EMBEDDED_DEFAULT

__all__ = [
    "BUILTIN_SPECS",
    "EMBEDDED_DEFAULT",
    "LoraSettings",
    "adapters_disabled",
    "apply_lora",
    "build_tiny_model",
    "is_peft_model",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "save_model",
]
