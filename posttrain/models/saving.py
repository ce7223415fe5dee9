"""Write models that plain transformers / peft load, atomically (posttrain.io.atomic_dir)."""

from __future__ import annotations

import copy
from pathlib import Path

from posttrain.io import atomic_dir
from posttrain.models.lora import is_peft_model


def save_model(model, tokenizer, out_dir: str | Path, save_merged: bool = False, base_spec: str | None = None) -> Path:
    """Full model: ``model.safetensors`` + config + tokenizer. LoRA: the adapter (+ ``merged/`` when asked).

    ``base_spec`` is written as the adapter's ``base_model_name_or_path`` so the folder can be reloaded later.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if is_peft_model(model) and base_spec is not None:
            for adapter_config in model.peft_config.values():
                adapter_config.base_model_name_or_path = base_spec
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if is_peft_model(model) and save_merged:
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp / "merged", safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "merged")
    return out_dir
