"""Merge models (or LoRA adapters) tensor by tensor, streaming from safetensors: ``posttrain merge CONFIG``.

Memory holds the tensors of one name across the inputs, plus at most one output shard, so models larger than RAM
merge. The rules are ``posttrain.math.merging``; this module reads, dispatches and writes. LoRA adapters merge
either into the base (a full model) or into one adapter: linear and task arithmetic exactly, by concatenating the
factors (rank = sum of the ranks); TIES and DARE on the per-module update B A, refactored by a truncated SVD.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import build_config, config_to_dict, option
from posttrain.errors import ConfigError
from posttrain.io import atomic_dir
from posttrain.math.merging import merge_tensors
from posttrain.models.tensor_files import TOKENIZER_FILES, ShardWriter, TensorReader, copy_side_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class MergeInput:
    model: str = option(help="a Hugging Face model folder, or a peft LoRA adapter folder")
    weight: float = option(1.0, help="w_i: the input's weight (linear: its share of the average; task arithmetic, "
                                     "TIES, DARE: the scale of its task vector)")


@dataclass
class MergeParameters:
    density: float = option(0.2, min=0, max=1, help="TIES: fraction of each task vector's entries kept (largest |.|)")
    drop_rate: float = option(0.0, min=0, max=0.999, help="DARE: probability p of dropping an entry (survivors "
                                                          "scaled by 1/(1-p)); with method ties, DARE replaces "
                                                          "the trim")
    scale: float = option(1.0, help="lambda: scale of the merged task vector (task_arithmetic, ties, dare)")
    t: float = option(0.5, min=0, max=1, help="slerp: 0 gives the first model, 1 the second")
    normalize: bool = option(True, help="linear: divide by the sum of the weights")
    seed: int = option(0, min=0, help="DARE: seed of the drop masks (each tensor's mask is seeded by it and the "
                                      "tensor's name, so results do not depend on shard layout)")


@dataclass
class MergeConfig:
    method: Literal["linear", "task_arithmetic", "ties", "dare", "slerp"] = option(
        help="linear (model soup), task_arithmetic, ties, dare, or slerp (two models)")
    models: list[MergeInput] = option(help="the inputs: a list of {model: FOLDER, weight: W}")
    out: str = option(help="output folder (replaced atomically)")
    base: str | None = option(None, help="the common ancestor theta_0: required by task_arithmetic, ties and dare; "
                                         "for adapters, the model they were trained on (default: the adapters' "
                                         "base_model_name_or_path)")
    parameters: MergeParameters = option(default_factory=MergeParameters, help="the method's parameters")
    into: Literal["model", "adapter"] = option("model", help="LoRA inputs: merge into the base (a full model) or into "
                                                             "one adapter")
    rank: int | None = option(None, min=1, help="adapter output of ties/dare: rank of the SVD refactoring (default: "
                                                "the largest input rank)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", help="dtype of the merged tensors (auto: the first input's)")
    max_shard_mb: float = option(2000.0, min=0.001, help="largest output shard, in MB")


def read_merge_config(config: str | Path | dict, overrides: list[str] | None = None) -> MergeConfig:
    from posttrain.config import apply_overrides, read_config_file

    source = "config" if isinstance(config, dict) else str(config)
    data = dict(config) if isinstance(config, dict) else read_config_file(config)
    return build_config(MergeConfig, apply_overrides(data, overrides or [], f"{source} (overrides)"), source=source)


def merge_models(config: MergeConfig, source: str = "config") -> Path:
    """Run the merge ``config`` describes; returns the output folder (weights, config, tokenizer, README.md)."""
    original = config
    config = _with_folders(config)
    _check(config, source)
    adapters = [(Path(m.model) / "adapter_config.json").is_file() for m in config.models]
    if any(adapters) and not all(adapters):
        raise ConfigError(f"{source}: key 'models' mixes LoRA adapter folders and full models; merge one kind")
    if config.into == "adapter" and not all(adapters):
        raise ConfigError(f"{source}: key 'into': 'adapter' needs LoRA adapter folders as inputs; these are full "
                          "models")
    out = Path(config.out)
    with atomic_dir(out) as tmp:
        if all(adapters):
            from posttrain.models.merging_lora import merge_adapters

            merge_adapters(config, tmp, source)
        else:
            _merge_full_models(config, tmp, source)
        (tmp / "README.md").write_text(merge_card(original, lora=all(adapters)))
    return out


def _with_folders(config: MergeConfig) -> MergeConfig:
    """The config with the embedded model's name (as base or input) replaced by its cached folder."""
    from posttrain.models.specs import EMBEDDED_DEFAULT

    def folder(spec: str | None) -> str | None:
        if spec != EMBEDDED_DEFAULT:
            return spec
        from posttrain.models.loading import model_folder

        return str(model_folder(spec))

    models = [dataclasses.replace(m, model=folder(m.model)) for m in config.models]
    return dataclasses.replace(config, base=folder(config.base), models=models)


def _check(config: MergeConfig, source: str) -> None:
    if not config.models:
        raise ConfigError(f"{source}: key 'models' is empty; list at least one {{model: FOLDER, weight: W}}")
    for i, entry in enumerate(config.models):
        if not Path(entry.model).is_dir():
            raise ConfigError(f"{source}: key 'models[{i}].model': {entry.model!r} is not a folder")
    if config.method == "slerp" and len(config.models) != 2:
        raise ConfigError(f"{source}: key 'models': slerp merges exactly two models, got {len(config.models)}")
    if config.method == "linear" and config.parameters.normalize and abs(sum(m.weight for m in config.models)) < 1e-12:
        raise ConfigError(f"{source}: key 'models[*].weight': the weights sum to zero; linear divides by their sum")
    if config.base is not None and not Path(config.base).is_dir():
        raise ConfigError(f"{source}: key 'base': {config.base!r} is not a folder")


def needs_base(method: str) -> bool:
    return method in ("task_arithmetic", "ties", "dare")


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """DARE's drop masks for tensor ``name``: the same whatever order or shard the tensor is merged in."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def merge_one(config: MergeConfig, name: str, params: list[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    """Tensor ``name`` merged by the config's method and parameters (float32 arithmetic; dtype cast by the caller)."""
    p = config.parameters
    return merge_tensors(config.method, params, [m.weight for m in config.models], base, density=p.density,
                         drop_rate=p.drop_rate, scale=p.scale, t=p.t, normalize=p.normalize,
                         generator=tensor_generator(p.seed, name))


def output_dtype(config: MergeConfig, first: torch.Tensor) -> torch.dtype:
    return DTYPES.get(config.dtype, first.dtype) if first.is_floating_point() else first.dtype


def _merge_full_models(config: MergeConfig, out: Path, source: str) -> None:
    if needs_base(config.method) and config.base is None:
        raise ConfigError(f"{source}: key 'base' is required by method {config.method} (task vectors are "
                          "differences from the base model)")
    readers = [TensorReader(m.model) for m in config.models]
    base = TensorReader(config.base) if config.base is not None and needs_base(config.method) else None
    writer = ShardWriter(out, int(config.max_shard_mb * 1_000_000))
    try:
        names = readers[0].names()
        for reader in readers[1:] + ([base] if base else []):
            missing = sorted(set(names) ^ set(reader.names()))
            if missing:
                raise ConfigError(f"{source}: {reader.folder} and {readers[0].folder} hold different tensors "
                                  f"(e.g. {missing[0]!r}); merge models of one architecture")
        for name in names:
            params = [reader.get(name) for reader in readers]
            base_tensor = base.get(name) if base else None
            shapes = {tuple(t.shape) for t in params + ([base_tensor] if base_tensor is not None else [])}
            if len(shapes) > 1:
                raise ConfigError(f"{source}: tensor {name!r} has different shapes across the inputs: {sorted(shapes)}")
            if not params[0].is_floating_point():  # integer buffers (e.g. position ids) are copied
                writer.add(name, params[0])
                continue
            writer.add(name, merge_one(config, name, params, base_tensor).to(output_dtype(config, params[0])))
        writer.close()
    finally:
        for reader in readers + ([base] if base else []):
            reader.close()
    side_source = Path(config.base) if config.base is not None else Path(config.models[0].model)
    copy_side_files(side_source, out)
    copy_side_files(Path(config.models[0].model), out, TOKENIZER_FILES)
    if config.dtype != "auto":
        _set_config_dtype(out / "config.json", config.dtype)


def _set_config_dtype(path: Path, dtype: str) -> None:
    if path.is_file():
        data = json.loads(path.read_text())
        data["dtype"] = dtype
        data.pop("torch_dtype", None)
        path.write_text(json.dumps(data, indent=2) + "\n")


def merge_card(config: MergeConfig, lora: bool = False) -> str:
    """README.md of a merged folder (``posttrain.models.model_card``'s Hub format): the inputs and weights, the
    method and every parameter, and the config that reproduces it."""
    from posttrain.models.model_card import model_card

    rows = "".join(f"| `{m.model}` | {m.weight:g} |\n" for m in config.models)
    settings = config_to_dict(config)
    method = (f"- method: **{config.method}**\n- base: `{config.base}`\n"
              f"- parameters: `{json.dumps(settings['parameters'])}`\n- dtype: {config.dtype}\n"
              + (f"- the inputs are LoRA adapters, merged into one {config.into}\n" if lora else ""))
    return model_card(
        f"Merged model ({config.method})", "Made by `posttrain merge` from the inputs below (docs/model_ops.md).",
        base_model=config.base or config.models[0].model, tags=["merge", config.method],
        sections={"Inputs": f"| model | weight |\n|---|---|\n{rows}", "Method": method,
                  "Reproduce": "Save this as `merge.yaml` and run `posttrain merge merge.yaml`:\n\n"
                               f"```json\n{json.dumps(settings, indent=2)}\n```"})
