"""Weight quantization for inference with torchao's ``quantize_`` configs, through transformers' ``TorchAoConfig``:
``posttrain quantize --model DIR --format int8 --out DIR``.

Why torchao (not optimum-quanto): it is PyTorch's own, maintained library (quanto's last release is from 2025 and
builds its CPU kernels with ninja, i.e. a compiler, at run time); transformers saves its quantized tensors to
safetensors and reloads them from ``config.json``'s ``quantization_config``, so the output folder loads with
``AutoModelForCausalLM`` and posttrain's ``load_model`` like any model (torchao must be installed to read it).

Linear layers are quantized; embeddings, norms and the (tied) output head stay in float32. Symmetric int8:
q = round(w / s), s = max|w| / 127 over a row (``group_size`` None) or over groups of ``group_size`` inputs, so
|w - s q| <= s / 2 per entry.
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.errors import ConfigError, require
from posttrain.io import atomic_dir

FORMATS = {
    "int8": "weight-only int8, one scale per output row or per group (activations stay float)",
    "int8-dynamic": "int8 weights and activations quantized per token at run time (int8 matmuls on CPU)",
    "int4": "weight-only int4 with group-wise scales and zero points (torchao stores the values unpacked in int8 "
            "on CPU, so the file is no smaller than int8; the accuracy is int4's)",
}


def torchao_config(fmt: str, group_size: int | None = None):
    """The torchao ``quantize_`` config of a format."""
    require("torchao", "quantize", "weight quantization")
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerGroup,
        PerRow,
    )

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if group_size is not None and group_size < 1:
        raise ConfigError(f"--group-size {group_size}: expected a positive integer")
    if fmt == "int8":
        return Int8WeightOnlyConfig(granularity=PerGroup(group_size) if group_size else PerRow())
    if fmt == "int8-dynamic":
        if group_size:
            raise ConfigError("--group-size: int8-dynamic uses one scale per row; leave it out")
        return Int8DynamicActivationInt8WeightConfig()
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size or 32))


def quantize_model(model: str | Path, out: str | Path, fmt: str = "int8", group_size: int | None = None) -> Path:
    """Quantize the linear layers of ``model`` (a folder or the embedded model's name) and write ``out``: weights,
    config (with its ``quantization_config``), tokenizer and a model card."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from posttrain.models.loading import load_tokenizer
    from posttrain.models.model_card import model_card
    from posttrain.models.specs import EMBEDDED_DEFAULT

    config = torchao_config(fmt, group_size)
    folder = Path(model)
    if str(model) == EMBEDDED_DEFAULT:
        from posttrain.models.loading import _embedded_dir

        folder = _embedded_dir()
    if not (folder / "config.json").is_file():
        hint = " (a LoRA adapter: merge it into its base first)" if (folder / "adapter_config.json").is_file() else ""
        raise ConfigError(f"--model {model}: not a Hugging Face model folder{hint}")
    quantized = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                     quantization_config=TorchAoConfig(quant_type=config))
    out = Path(out)
    with atomic_dir(out) as tmp:
        quantized.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(str(folder)).save_pretrained(tmp)
        group = group_size or ("per row" if fmt != "int4" else 32)
        (tmp / "README.md").write_text(model_card(
            f"Quantized model ({fmt})",
            f"Made by `posttrain quantize` with torchao from `{model}`: {FORMATS[fmt]}; group size {group}. Linear "
            "layers only; embeddings and norms stay float32. Loading it needs torchao: "
            "pip install 'posttrain[quantize]'.", base_model=str(model), tags=["quantized", "torchao", fmt]))
    return out
