"""Checkpoints that resume exactly and never unpickle: tensors in safetensors, everything else in JSON.

``checkpoints/step_N/`` holds the model (full weights or the LoRA adapter, loadable by transformers / peft),
``optimizer.safetensors`` + ``optimizer.json``, ``rng.safetensors``, ``trainer_state.json`` (step, data position,
scheduler, Python RNG, logging window, early-stopping state, the method's state) and ``method.safetensors`` (the
tensors of the method's state, if it has any). It is written to a temporary folder and
renamed, so a checkpoint either exists completely or not at all.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from posttrain.models.lora import is_peft_model
from posttrain.errors import PosttrainError
from posttrain.io import atomic_dir

STATE_FILE = "trainer_state.json"
METHOD_TENSORS = "method.safetensors"  # the tensors of the method's state (Method.state_dict)


class CheckpointWriteError(PosttrainError):
    pass
_STEP_DIR = re.compile(r"^step_(\d+)$")


def save_checkpoint(directory: Path, save_model, optimizer, state: dict, keep_last: int | None) -> Path:
    """Write ``directory`` atomically, then delete all but the newest ``keep_last`` sibling checkpoints. A write that
    fails (a full disk) leaves the earlier checkpoints as they were and stops the run with a CheckpointWriteError."""
    try:
        with atomic_dir(directory) as tmp:
            save_model(tmp)
            if optimizer is not None:  # None: save_model wrote it (sharded checkpoints, posttrain.engine.fsdp)
                tensors, skeleton = flatten_tensors(optimizer.state_dict())
                save_file(tensors, tmp / "optimizer.safetensors")
                (tmp / "optimizer.json").write_text(json.dumps(skeleton))
            rng = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            save_file(rng, tmp / "rng.safetensors")
            method_tensors, method_state = flatten_tensors(state.get("method", {}))  # e.g. a rollout reused next step
            if method_tensors:
                save_file(method_tensors, tmp / METHOD_TENSORS)
            state = dict(state, method=method_state, python_rng=_python_rng_to_json(random.getstate()))
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    except OSError as exc:
        previous = list_checkpoints(directory.parent)
        kept = f"the last complete checkpoint, {previous[-1]}, is intact" if previous else "no checkpoint was written"
        raise CheckpointWriteError(f"could not write checkpoint {directory}: {exc.strerror or exc}; {kept}; free "
                                   "space and re-run the same command to resume") from exc
    if keep_last:
        for old in list_checkpoints(directory.parent)[:-keep_last]:
            _remove_tree(old)
    return directory


def load_checkpoint(directory: Path, load_model, optimizer) -> dict:
    """Restore model weights (``load_model(directory)``, the inverse of the ``save_model`` that wrote them), optimizer
    and RNG states from ``directory``; returns the trainer state. ``optimizer`` None: ``load_model`` loads it."""
    load_model(directory)
    if optimizer is not None:
        skeleton = json.loads((directory / "optimizer.json").read_text())
        optimizer.load_state_dict(unflatten_tensors(load_file(directory / "optimizer.safetensors"), skeleton))
    rng = load_file(directory / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    state = json.loads((directory / STATE_FILE).read_text())
    random.setstate(_python_rng_from_json(state.pop("python_rng")))
    method_tensors = load_file(directory / METHOD_TENSORS) if (directory / METHOD_TENSORS).is_file() else {}
    state["method"] = unflatten_tensors(method_tensors, state.get("method", {}))
    return state


def load_model_weights(model, directory: Path) -> None:
    """Load weights written by ``save_pretrained`` (full model or peft adapter) into the live ``model``."""
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        return
    state = load_file(directory / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not match the model: missing {missing}, unexpected {unexpected}")


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (a complete one has its trainer_state.json)."""
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def flatten_tensors(obj, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested dict/list into ``{path: tensor}`` and a JSON skeleton with ``{"__tensor__": path}`` leaves."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach().contiguous().cpu()}, {"__tensor__": prefix}
    if isinstance(obj, dict):
        tensors, skeleton = {}, {"__dict__": []}
        for key, value in obj.items():
            sub_tensors, sub = flatten_tensors(value, f"{prefix}.{key}" if prefix else str(key))
            tensors.update(sub_tensors)
            skeleton["__dict__"].append([key, sub])
        return tensors, skeleton
    if isinstance(obj, (list, tuple)):
        tensors, items = {}, []
        for i, value in enumerate(obj):
            sub_tensors, sub = flatten_tensors(value, f"{prefix}.{i}")
            tensors.update(sub_tensors)
            items.append(sub)
        return tensors, {"__list__": items, "tuple": isinstance(obj, tuple)}
    return {}, obj


def unflatten_tensors(tensors: dict[str, torch.Tensor], skeleton):
    """Inverse of ``flatten_tensors`` (dict keys keep their types: optimizer state is keyed by int)."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {key: unflatten_tensors(tensors, sub) for key, sub in skeleton["__dict__"]}
    if isinstance(skeleton, dict) and "__list__" in skeleton:
        items = [unflatten_tensors(tensors, sub) for sub in skeleton["__list__"]]
        return tuple(items) if skeleton["tuple"] else items
    return skeleton


def _python_rng_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
