"""Export a Hugging Face llama-architecture folder to one GGUF file (llama.cpp, Ollama, LM Studio):
``posttrain export --model DIR --gguf f16 --out model.gguf``.

Everything format-specific comes from the ``gguf`` package (the one llama.cpp maintains): ``GGUFWriter`` for the
file, ``get_tensor_name_map`` for the tensor names, ``gguf.quants`` for the block quantizations, ``gguf.vocab``
for the tokenizer, special tokens, merges and chat template. What is ours: the config -> metadata keys, the q/k
row permutation llama.cpp's converter applies (and transformers' reader undoes), and the choice of type per tensor.
Tensors stream one at a time from the safetensors files; the writer spools their data to a temporary file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from posttrain.errors import ConfigError, require
from posttrain.models.tensor_files import TensorReader

log = logging.getLogger(__name__)

# format -> (GGML type of the 2-D weights, llama.cpp file type); 1-D tensors (norms) stay F32 as llama.cpp keeps them.
FORMATS = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
           "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
           "q4_1": ("Q4_1", "MOSTLY_Q4_1"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_k": ("Q4_K", "MOSTLY_Q4_K_S")}
# Where a row does not fill whole blocks of a type, the type llama.cpp's quantizer falls back to; for the output head
# (or the embedding tied to it) llama.cpp's Q4_K_S wants Q6_K, whose fallback is Q8_0.
FALLBACK = {"Q4_K": "Q5_0"}
HEAD_FALLBACK = {"Q4_K": "Q8_0"}
# The other k-quants: gguf's Python package (0.19.0, its newest release) reads them but has no quantizer for them
# (`gguf.quants.Q4_K` defines dequantize_blocks only; Q4_K is ours, gguf_kquants.py); llama.cpp's C++
# `llama-quantize` writes them from our f16 file.
K_QUANTS = ("q2_k", "q3_k", "q4_k_m", "q4_k_s", "q5_k", "q5_k_m", "q5_k_s", "q6_k")


def export_gguf(model_dir: str | Path, out_file: str | Path, fmt: str = "f16",
                tokenizer_pre: str | None = None) -> Path:
    """Write ``model_dir`` (a llama-architecture HF folder with safetensors and a tokenizer) as GGUF ``fmt``."""
    gguf = require("gguf", "embedded", "GGUF export")
    from posttrain.models.loading import model_folder

    model_dir, out_file = model_folder(model_dir), Path(out_file)
    if not model_dir.is_dir():
        raise ConfigError(f"--model {model_dir}: no such folder (expected a Hugging Face model folder)")
    if fmt.lower() in K_QUANTS:
        raise ConfigError(f"--gguf {fmt}: the gguf package (version {_version('gguf')}) can read k-quants but not "
                          f"write them (posttrain writes q4_k itself); export --gguf f16 and run llama.cpp's "
                          f"`llama-quantize MODEL-f16.gguf MODEL-{fmt.lower()}.gguf {fmt.upper()}`, or use --gguf "
                          "q4_k / q4_0 / q4_1 / q5_0 / q8_0 here")
    if fmt not in FORMATS:
        raise ConfigError(f"--gguf {fmt!r}: expected one of {', '.join(FORMATS)}")
    if (model_dir / "adapter_config.json").is_file():
        raise ConfigError(f"--model {model_dir} is a LoRA adapter: merge it into its base first "
                          "(posttrain merge with into: model) and export that folder")
    config = _read_config(model_dir)
    qtype = gguf.GGMLQuantizationType[FORMATS[fmt][0]]
    n_layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".tmp-{out_file.name}")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA], use_temp_file=True)
    try:
        _add_metadata(writer, gguf, config, model_dir, fmt)
        vocab_size = _add_tokenizer(writer, gguf, model_dir, config["vocab_size"], tokenizer_pre)
        with TensorReader(model_dir) as reader:
            tied = not any(name.endswith("lm_head.weight") for name in reader.names())
            for name in reader.names():
                gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    if name.endswith("rotary_emb.inv_freq"):  # recomputed from the config
                        continue
                    raise ConfigError(f"{model_dir}: tensor {name!r} has no GGUF name for a llama model")
                data = reader.get(name).float().numpy()
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    heads = config["num_attention_heads"]
                    kv = config["num_key_value_heads"] if name.endswith("k_proj.weight") else heads
                    data = _permute(data, kv)
                if name.endswith("embed_tokens.weight") and data.shape[0] != vocab_size:
                    raise ConfigError(f"{model_dir}: the embedding has {data.shape[0]} rows but the tokenizer "
                                      f"{vocab_size} tokens")
                if not np.isfinite(data).all():
                    raise ConfigError(f"{model_dir}: tensor {name!r} has NaN or infinite values")
                head = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
                _add_tensor(writer, gguf, gguf_name, data, qtype, head)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    tmp.replace(out_file)
    return out_file


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"--model {model_dir}: no config.json (expected a Hugging Face model folder)")
    config = json.loads(path.read_text())
    if config.get("model_type") != "llama":
        raise ConfigError(f"{path}: model_type {config.get('model_type')!r}; GGUF export supports llama-architecture "
                          "models (Llama, SmolLM2, TinyLlama, ...)")
    rope = config.get("rope_parameters") or {}
    if (rope.get("rope_type") or "default") != "default" or config.get("rope_scaling"):
        raise ConfigError(f"{path}: rope scaling ({rope.get('rope_type') or config.get('rope_scaling')}) is not "
                          "exported; only the default rotary embedding is")
    return config


def _add_metadata(writer, gguf, config: dict, model_dir: Path, fmt: str) -> None:
    heads = config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_dir.resolve().name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_file_type(gguf.LlamaFileType[FORMATS[fmt][1]])
    if fmt not in ("f32", "f16", "bf16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, gguf, model_dir: Path, vocab_size: int, tokenizer_pre: str | None) -> int:
    """Tokens, types, merges, special ids and the chat template; padded with unused tokens to the model's vocabulary
    (as llama.cpp's converter does). Returns the number of tokens written."""
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

    tokenizer_json = model_dir / "tokenizer.json"
    try:
        vocab = BpeVocab(model_dir)
    except FileNotFoundError:
        try:
            vocab = LlamaHfVocab(model_dir)
        except (FileNotFoundError, TypeError) as exc:
            raise ConfigError(f"{model_dir}: no byte-level BPE or llama tokenizer to export ({exc})") from None
    tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens()))
    if tokenizer_json.is_file():  # an added token that is not special is USER_DEFINED, not CONTROL
        plain = {t["id"] for t in json.loads(tokenizer_json.read_text()).get("added_tokens", []) if not t["special"]}
        types = [gguf.TokenType.USER_DEFINED if i in plain else kind for i, kind in enumerate(types)]
    if len(tokens) > vocab_size:
        raise ConfigError(f"{model_dir}: the tokenizer has {len(tokens)} tokens, the model's vocab_size is "
                          f"{vocab_size}")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre(tokenizer_pre or _pre_tokenizer(tokenizer_json))
    writer.add_token_list(tokens)
    if vocab.tokenizer_model != "gpt2":
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    SpecialVocab(model_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)).add_to_gguf(
        writer, quiet=True)
    return len(tokens)


def _pre_tokenizer(tokenizer_json: Path) -> str:
    """llama.cpp's name for how text is split before BPE: GPT-2's regex, with single digits first for SmolLM."""
    if not tokenizer_json.is_file():
        return "default"
    pre = json.loads(tokenizer_json.read_text()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(step.get("type"), step.get("individual_digits"), step.get("use_regex")) for step in steps]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"
    log.warning("%s: pre-tokenizer %s has no known llama.cpp name; writing 'default' (pass --tokenizer-pre)",
                tokenizer_json, [k[0] for k in kinds])
    return "default"


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows: each head's two halves interleaved (transformers reverses it)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensor(writer, gguf, name: str, data: np.ndarray, qtype, head: bool = False) -> None:
    from gguf import quants

    from posttrain.models.gguf_kquants import quantize_q4_k

    if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
        return
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    fallback = HEAD_FALLBACK if head else FALLBACK
    if data.shape[-1] % block and qtype.name in fallback:  # as llama.cpp: Q4_K rows of 576 values are Q5_0
        log.info("%s: row length %d is not a multiple of %d; written as %s", name, data.shape[-1], block,
                 fallback[qtype.name])
        qtype = gguf.GGMLQuantizationType[fallback[qtype.name]]
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if data.shape[-1] % block:  # rows that do not fill whole blocks fall back to F16, as llama.cpp does
        log.warning("%s: row length %d is not a multiple of %d; written as F16", name, data.shape[-1], block)
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    elif qtype == gguf.GGMLQuantizationType.Q4_K:
        writer.add_tensor(name, quantize_q4_k(data), raw_dtype=qtype)
    else:
        writer.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)
