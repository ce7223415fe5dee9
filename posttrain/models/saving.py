"""Write models that plain transformers / peft load, atomically: into a temporary sibling folder, then renamed."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

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


class atomic_dir:
    """``with atomic_dir(path) as tmp:`` write into ``tmp``; on success it replaces ``path``; on error nothing changes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.path.name}-", dir=self.path.parent))
        os.chmod(self.tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        _fsync_tree(self.tmp)
        old = None
        if self.path.exists():
            old = self.path.with_name(f".old-{self.path.name}-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
