"""Tensor-by-tensor access to safetensors checkpoints: read one tensor at a time from a model folder (single file or
sharded with an index), write output shards as they fill. Used where a whole model need not be in memory (merging)."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from posttrain.errors import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")
INDEX_FILE = "model.safetensors.index.json"
# what a model folder holds besides its weights, copied to a derived folder (a merge, an upcycled model)
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt",
              "added_tokens.json", "tokenizer.model")
TOKENIZER_FILES = tuple(name for name in SIDE_FILES if name not in ("config.json", "generation_config.json"))


class TensorReader:
    """The tensors of one folder, by name, loaded only when asked (``safe_open`` memory-maps the files).

    ``with TensorReader(folder) as reader: reader.get(name)``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = _weight_map(self.folder)  # tensor name -> file
        self._stack = contextlib.ExitStack()
        self._handles: dict[Path, object] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self.files.get(name)
        if path is None:
            raise ModelLoadError(f"{self.folder}: no tensor named {name!r}")
        if path not in self._handles:
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path].get_tensor(name)


def _weight_map(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder")
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index}: key 'weight_map' is missing")
        return {name: folder / file for name, file in weight_map.items()}
    for file in WEIGHT_FILES:
        if (folder / file).is_file():
            with safe_open(str(folder / file), framework="pt") as handle:
                return {name: folder / file for name in handle.keys()}
    raise ModelLoadError(f"{folder}: no {' / '.join(WEIGHT_FILES)} or {INDEX_FILE} (only safetensors are read; "
                         "re-save the model with save_pretrained(safe_serialization=True))")


class ShardWriter:
    """Collects output tensors and writes a shard whenever ``max_shard_bytes`` would be exceeded, so at most one
    shard of output is in memory. ``close()`` names the shards as transformers does and writes the index."""

    def __init__(self, folder: Path, max_shard_bytes: int, stem: str = "model"):
        self.folder, self.max_shard_bytes, self.stem = Path(folder), max_shard_bytes, stem
        self._buffer: dict[str, torch.Tensor] = {}
        self._bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._bytes + size > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.folder / f".{self.stem}-part{len(self._shards)}.safetensors"
        save_file(self._buffer, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._bytes = {}, 0

    def close(self) -> list[Path]:
        if self._buffer or not self._shards:
            self._flush()
        if len(self._shards) == 1:
            final = self.folder / f"{self.stem}.safetensors"
            self._shards[0][0].rename(final)
            return [final]
        count, weight_map, paths, total = len(self._shards), {}, [], 0
        for number, (path, names) in enumerate(self._shards, start=1):
            final = self.folder / f"{self.stem}-{number:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            paths.append(final)
            total += final.stat().st_size
            weight_map.update({name: final.name for name in names})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.folder / f"{self.stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return paths


def copy_side_files(source: Path, target: Path, names: tuple[str, ...] = SIDE_FILES) -> list[str]:
    """Copy the config and tokenizer files ``source`` has into ``target``; returns the names copied."""
    copied = []
    for name in names:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied
