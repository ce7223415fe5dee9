"""Merging peft LoRA adapters (Hu et al. 2021: W' = W + s B A, s = alpha / r, or alpha / sqrt(r) with rsLoRA).

Into the base: every input becomes theta_i = W + s_i B_i A_i for the modules it adapts, and the rule runs on full
tensors, one at a time. Into one adapter: linear and task arithmetic are linear in the updates, so concatenating
the scaled factors is exact: sum_i c_i s_i B_i A_i = [.. sgn(c_i) sqrt|c_i s_i| B_i ..] [.. sqrt|c_i s_i| A_i ..];
TIES and DARE act on the updates Delta_i = s_i B_i A_i themselves (their base is 0) and the result is refactored
by a truncated SVD, Delta ~ (U_R S_R) V_R^T, as peft's ``add_weighted_adapter`` does (its ``ties_svd``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from posttrain.errors import ConfigError
from posttrain.models.tensor_files import TOKENIZER_FILES, ShardWriter, TensorReader, copy_side_files

_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")


class Adapter:
    """One adapter folder: its scale and, per adapted base tensor (``model.layers.0.mlp.up_proj.weight``), the keys
    of its A (r, in) and B (out, r) factors."""

    def __init__(self, folder: str | Path, source: str, index: int):
        self.folder = Path(folder)
        self.config = json.loads((self.folder / "adapter_config.json").read_text())
        where = f"{source}: key 'models[{index}].model' ({self.folder / 'adapter_config.json'})"
        for key in ("rank_pattern", "alpha_pattern"):
            if self.config.get(key):
                raise ConfigError(f"{where}: {key} is set; only adapters of one rank and alpha merge")
        if self.config.get("use_dora") or self.config.get("fan_in_fan_out"):
            raise ConfigError(f"{where}: DoRA and fan_in_fan_out adapters are not supported")
        rank, alpha = int(self.config["r"]), float(self.config["lora_alpha"])
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank
        self.reader = TensorReader(self.folder)
        self.modules: dict[str, dict[str, str]] = {}
        for key in self.reader.names():
            match = _LORA_KEY.match(key)
            if match is None:
                raise ConfigError(f"{where}: tensor {key!r} is not a LoRA factor (modules_to_save, embedding "
                                  "adapters and DoRA are not merged)")
            self.modules.setdefault(f"{match['module']}.weight", {})[match["factor"]] = key

    def update(self, name: str) -> torch.Tensor:
        """Delta = s B A, ``(out, in)``, in float32."""
        keys = self.modules[name]
        return self.scaling * (self.reader.get(keys["B"]).float() @ self.reader.get(keys["A"]).float())

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.modules[name]
        return self.reader.get(keys["A"]).float(), self.reader.get(keys["B"]).float()


def base_folder(config, adapters: list[Adapter], source: str) -> Path:
    """The model the adapters were trained on: ``base`` in the config, else their ``base_model_name_or_path``."""
    from posttrain.models.loading import model_folder
    from posttrain.models.specs import EMBEDDED_DEFAULT

    spec = config.base or adapters[0].config.get("base_model_name_or_path")
    if spec == EMBEDDED_DEFAULT:
        return model_folder(spec)
    if not spec or not Path(spec).is_dir():
        raise ConfigError(f"{source}: key 'base': the adapters' base model {spec!r} is not a folder; set base: FOLDER")
    return Path(spec)


def merge_adapters(config, out: Path, source: str) -> None:
    from posttrain.models.merging import merge_one, output_dtype

    adapters = [Adapter(m.model, source, i) for i, m in enumerate(config.models)]
    try:
        if config.into == "adapter":
            _merge_into_adapter(config, adapters, out, source)
            copy_side_files(adapters[0].folder, out, TOKENIZER_FILES)
            return
        base_path = base_folder(config, adapters, source)
        writer = ShardWriter(out, int(config.max_shard_mb * 1_000_000))
        with TensorReader(base_path) as base:
            unknown = sorted({n for a in adapters for n in a.modules} - set(base.names()))
            if unknown:
                raise ConfigError(f"{source}: the adapters adapt {unknown[0]!r}, which the base {base_path} does not "
                                  "hold")
            for name in base.names():
                weight = base.get(name)
                if not any(name in a.modules for a in adapters):  # every rule maps (W, ..., W) to W
                    writer.add(name, weight.to(output_dtype(config, weight)))
                    continue
                params = [weight.float() + a.update(name) if name in a.modules else weight.float() for a in adapters]
                merged = merge_one(config, name, params, weight.float())
                writer.add(name, merged.to(output_dtype(config, weight)))
        writer.close()
        copy_side_files(base_path, out)
        copy_side_files(adapters[0].folder, out, TOKENIZER_FILES)
    finally:
        for adapter in adapters:
            adapter.reader.close()


def _merge_into_adapter(config, adapters: list[Adapter], out: Path, source: str) -> None:
    from posttrain.models.merging import merge_one

    if config.method == "slerp":
        raise ConfigError(f"{source}: key 'into': slerp interpolates full weights; use into: model")
    weights = [m.weight for m in config.models]
    exact = config.method in ("linear", "task_arithmetic")
    if exact:
        total = sum(weights) if config.method == "linear" and config.parameters.normalize else 1.0
        coefficients = [w / total * (config.parameters.scale if config.method == "task_arithmetic" else 1.0)
                        for w in weights]
        rank = sum(a.rank for a in adapters)
    else:
        rank = config.rank or max(a.rank for a in adapters)
    names = sorted({n for a in adapters for n in a.modules})
    writer = ShardWriter(out, int(config.max_shard_mb * 1_000_000), stem="adapter_model")
    for name in names:
        if exact:
            a_factor, b_factor = _concatenated(adapters, coefficients, name)
        else:
            updates = [a.update(name) if name in a.modules else None for a in adapters]
            shape = next(u for u in updates if u is not None).shape
            updates = [u if u is not None else torch.zeros(shape) for u in updates]
            merged = merge_one(config, name, updates, torch.zeros(shape))
            a_factor, b_factor = _svd_factors(merged, rank)
        module = name.removesuffix(".weight")
        writer.add(f"base_model.model.{module}.lora_A.weight", a_factor.contiguous())
        writer.add(f"base_model.model.{module}.lora_B.weight", b_factor.contiguous())
    writer.close()
    adapter_config = dict(adapters[0].config)
    # alpha = r makes the scale 1: the factors written carry the inputs' scales
    adapter_config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
                          target_modules=sorted({n.removesuffix(".weight").rsplit(".", 1)[-1] for n in names}))
    if config.base is not None:
        adapter_config["base_model_name_or_path"] = config.base
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")


def _concatenated(adapters: list[Adapter], coefficients: list[float], name: str):
    """A (sum r_i, in), B (out, sum r_i) with B A = sum_i c_i s_i B_i A_i (inputs lacking the module add zeros)."""
    a_parts, b_parts = [], []
    for adapter, c in zip(adapters, coefficients):
        if name in adapter.modules:
            a, b = adapter.factors(name)
            root = math.sqrt(abs(c * adapter.scaling))
            a_parts.append(root * a)
            b_parts.append(math.copysign(root, c) * b)
    shape_in, shape_out = a_parts[0].shape[1], b_parts[0].shape[0]
    for adapter in adapters:
        if name not in adapter.modules:
            a_parts.append(torch.zeros(adapter.rank, shape_in))
            b_parts.append(torch.zeros(shape_out, adapter.rank))
    return torch.cat(a_parts, 0), torch.cat(b_parts, 1)


def _svd_factors(update: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factorisation (Eckart-Young): B = U_R S_R, A = V_R^T (zero-padded past full rank)."""
    u, s, vh = torch.linalg.svd(update.float(), full_matrices=False)
    kept = min(rank, s.numel())
    a = torch.zeros(rank, update.shape[1])
    b = torch.zeros(update.shape[0], rank)
    a[:kept], b[:, :kept] = vh[:kept], u[:, :kept] * s[:kept]
    return a, b
