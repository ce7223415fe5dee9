"""Weight quantization for inference with torchao's ``quantize_`` configs, through transformers' ``TorchAoConfig``:
``posttrain quantize --model DIR --format int8 --out DIR``.

Why torchao (not optimum-quanto): it is PyTorch's own, maintained library (quanto's last release is from 2025 and
builds its CPU kernels with ninja, i.e. a compiler, at run time); transformers saves its quantized tensors to
safetensors and reloads them from ``config.json``'s ``quantization_config``, so the output folder loads with
``AutoModelForCausalLM`` and posttrain's ``load_model`` like any model (torchao must be installed to read it).

The linear layers and the token embedding are quantized (``embeddings=False``: linear layers only, the embedding and
the output head stay float32). An output head tied to the embedding (SmolLM2) stays tied: the one quantized tensor
serves the lookup (torchao dequantizes it) and the head's matmul, and is stored once. Norms stay float32.
Symmetric int8: q = round(w / s), s = max|w| / 127 over a row (``group_size`` None) or over groups of
``group_size`` inputs, so |w - s q| <= s / 2 per entry; an embedding row is one token's vector, so "per row" is one
scale per token, for the lookup and for the tied head's output row alike.
"""

from __future__ import annotations

import json
import re
import types
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


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """A torchao-quantized weight as a plain float tensor, any other weight as it is. posttrain's chunked log-probs
    multiply by the output head's weight transposed, which torchao's tensors do not support (they implement
    ``F.linear``, the model's own forward); quantized models are for inference, so no gradient is lost."""
    data = _tensor(weight)
    return data.dequantize() if _is_torchao(data) else weight


def _tensor(weight: torch.Tensor) -> torch.Tensor:
    """The tensor behind a parameter (torchao's subclass sits in ``.data``)."""
    return weight.data if isinstance(weight, torch.nn.Parameter) else weight


def _is_torchao(tensor: torch.Tensor) -> bool:
    return type(tensor).__module__.startswith("torchao.")


def embedding_rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``weight[ids]``: the rows of an embedding table for token ids of any shape, ``ids.shape + (dim,)``.

    torchao's quantized tensors implement the lookup by dequantizing the whole table (49152 x 576 floats for
    SmolLM2) and then indexing it, once per forward, i.e. per generated token. Every format here quantizes a row on
    its own (block size 1 along the rows: one scale, or one per group, per token), so the rows' quantized values,
    scales and zero points can be gathered first and only those rows dequantized: the same numbers, computed on
    ``ids.numel()`` rows instead of the vocabulary. Plain tensors are indexed as they are."""
    data = _tensor(weight)
    if not _gatherable(data):
        return torch.nn.functional.embedding(ids, weight)
    names, context = data.__tensor_flatten__()
    rows, flat = data.shape[0], ids.reshape(-1)
    parts = {}
    for name in names:
        part = getattr(data, name)  # qdata (rows, dim); scale and zero point (rows,) or (rows, groups)
        parts[name] = part.index_select(0, flat) if part.dim() > 0 and part.shape[0] == rows else part
    gathered = type(data).__tensor_unflatten__(parts, context, (flat.numel(), *data.shape[1:]), None)
    return gathered.dequantize().reshape(*ids.shape, -1)


def gather_rows_before_dequantizing(model: torch.nn.Module) -> None:
    """Make a torchao-quantized input embedding look up through ``embedding_rows`` (for inference: it has no
    gradient, padding rows and ``max_norm`` do not apply)."""
    embedding = model.get_input_embeddings()
    weight = getattr(embedding, "weight", None)
    # only nn.Embedding's own lookup: a subclass's forward may do more (Gemma scales the rows by sqrt(hidden))
    if weight is not None and type(embedding).forward is torch.nn.Embedding.forward and _gatherable(weight.data):
        embedding.forward = types.MethodType(_embedding_rows_forward, embedding)  # a bound method deep-copies


def _gatherable(data: torch.Tensor) -> bool:
    """A torchao table whose rows are quantized each on their own (block size 1 along the rows)."""
    return _is_torchao(data) and data.ndim == 2 and tuple(getattr(data, "block_size", (0,)))[0] == 1


def _embedding_rows_forward(embedding: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return embedding_rows(embedding.weight, ids)


def quantization_config(folder: Path, config, embeddings: bool = True):
    """transformers' ``TorchAoConfig`` applying ``config`` to every linear weight and, with ``embeddings``, to the
    input embedding too. transformers applies a plain config to ``nn.Linear`` only (its ``quantize_`` call keeps
    torchao's linear filter even with ``include_input_output_embeddings``), so the embedding needs an
    ``FqnToConfig`` naming the weights: one regex over the linear layers' names and the embedding's own name, read
    off a skeleton of the model on the meta device (no weights loaded). A tied head is not named: it is the
    embedding's tensor."""
    from torch import nn
    from torchao.quantization import FqnToConfig
    from transformers import AutoConfig, AutoModelForCausalLM, TorchAoConfig

    if not embeddings:
        return TorchAoConfig(quant_type=config)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    embedding, head = skeleton.get_input_embeddings(), skeleton.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    modules = dict(skeleton.named_modules())
    linears = {name for name, module in modules.items() if isinstance(module, nn.Linear)
               and not (tied and module is head)}
    leaves = sorted({name.rsplit(".", 1)[-1] for name in linears})
    pattern = rf"(.*\.)?({'|'.join(map(re.escape, leaves))})"
    if {name for name in modules if re.fullmatch(pattern, name)} != linears:  # a leaf name shared with another kind
        keys = [f"{name}.weight" for name in sorted(linears)]
    else:
        keys = [rf"re:{pattern}\.weight"]
    keys.append(next(f"{name}.weight" for name, module in modules.items() if module is embedding))
    return TorchAoConfig(quant_type=FqnToConfig({key: config for key in keys}), include_input_output_embeddings=True)


def quantize_model(model: str | Path, out: str | Path, fmt: str = "int8", group_size: int | None = None,
                   embeddings: bool = True) -> Path:
    """Quantize the linear layers and (``embeddings``) the token embedding of ``model`` (a folder or the embedded
    model's name) and write ``out``: weights, config (with its ``quantization_config``), tokenizer and a model card."""
    from transformers import AutoModelForCausalLM

    from posttrain.models.loading import load_tokenizer, model_folder
    from posttrain.models.model_card import model_card

    config = torchao_config(fmt, group_size)
    folder = model_folder(model)
    if not (folder / "config.json").is_file():
        hint = " (a LoRA adapter: merge it into its base first)" if (folder / "adapter_config.json").is_file() else ""
        raise ConfigError(f"--model {model}: not a Hugging Face model folder{hint}")
    quantized = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                     quantization_config=quantization_config(folder, config,
                                                                                             embeddings))
    out = Path(out)
    with atomic_dir(out) as tmp:
        quantized.save_pretrained(tmp, safe_serialization=True)
        head = quantized.get_output_embeddings()
        if embeddings and head is not None and head.weight is quantized.get_input_embeddings().weight:
            _drop_tied_copy(tmp, next(f"{name}.weight" for name, module in quantized.named_modules()
                                      if module is head))
        load_tokenizer(str(folder)).save_pretrained(tmp)
        group = group_size or ("per row" if fmt != "int4" else 32)
        which = ("linear layers and the token embedding (the tied output head is the same tensor)" if embeddings
                 else "linear layers only; embeddings and the output head stay float32")
        (tmp / "README.md").write_text(model_card(
            f"Quantized model ({fmt})",
            f"Made by `posttrain quantize` with torchao from `{model}`: {FORMATS[fmt]}; group size {group}. "
            f"Quantized: {which}; norms stay float32. Loading it needs torchao: pip install 'posttrain[quantize]'.",
            base_model=str(model), tags=["quantized", "torchao", fmt]))
    return out


def _drop_tied_copy(folder: Path, head: str) -> None:
    """Remove the second copy of a tied, quantized head from the saved files. torchao's safetensors flattening clones
    each tensor's parts, so transformers no longer sees the head and the embedding as one tensor and writes both;
    the reload ties the head to the embedding again, as for any tied model (``tie_word_embeddings``)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    prefix = head.rsplit(".", 1)[0] + "."
    index = folder / "model.safetensors.index.json"
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
            if not any(name.startswith(prefix) for name in names):
                continue
            tensors = {name: f.get_tensor(name) for name in names if not name.startswith(prefix)}
        metadata = {k: v for k, v in metadata.items() if not k.startswith(prefix)}
        if "tensor_names" in metadata:
            metadata["tensor_names"] = json.dumps([n for n in json.loads(metadata["tensor_names"]) if n != head])
        save_file(tensors, str(path), metadata=metadata)
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if not k.startswith(prefix)}
        index.write_text(json.dumps(data, indent=2))
