"""Every shipped preset, shrunk to the tiny model: what it logs and the weights it ends with.

``record(name, workdir)`` runs ``configs/<name>.yaml`` with the tiny model and a few steps and returns its logged
numbers (timings dropped) and a fingerprint of every tensor it saved in ``final/``. The architecture refactor (issue
20) must leave all of them unchanged: ``presets_golden.json`` holds them as recorded before it, and
``test_presets_unchanged.py`` compares. Regenerate only when a change is meant to alter training:

    .venv/bin/python tests/invariants/presets.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("presets_golden.json")

_SMALL = {"model": "tiny", "progress_bar": False, "logging_steps": 1, "eval_steps": 2, "save_steps": 2,
          "max_steps": 4, "save_total_limit": 1}
_PREFERENCE = {"data.split": "train[:32]", "data.eval_split": "[:16]", "eval_batch_size": 8}
# the task's checker gives a random tiny model no signal (every reward 0); this reward varies, so updates happen
_RL = {"num_train_prompts": 32, "num_eval_prompts": 4, "max_new_tokens": 6, "eval_samples": 2, "top_k": 20,
       "rewards": [{"name": "arithmetic"}, {"function": "presets:starts_a_word", "weight": 0.5}]}
OVERRIDES = {
    "sft": {"data.split": "train[:48]", "data.eval_split": "[:16]"},
    "sft_lora": {"data.split": "train[:48]", "data.eval_split": "[:16]"},
    "sft_low_memory": {"data.split": "train[:48]", "data.eval_split": "[:16]", "batch_size": 1, "grad_accum_steps": 4},
    "dpo": {**_PREFERENCE, "eval_generations": 4, "max_new_tokens": 6},
    "dpo_lora": _PREFERENCE,
    "dpo_low_memory": {**_PREFERENCE, "batch_size": 4, "eval_generations": 4, "max_new_tokens": 6},
    "simpo": _PREFERENCE,
    "orpo": _PREFERENCE,
    "kto": _PREFERENCE,
    "reward": _PREFERENCE,
    "grpo": {**_RL, "batch_size": 2, "group_size": 4},
    "grpo_kl_iterations": {**_RL, "batch_size": 2, "group_size": 4, "beta": 0.04, "num_iterations": 2,
                           "skip_zero_variance_groups": True, "loss_aggregation": "dr_grpo", "pack_groups": False},
    "rloo": {**_RL, "batch_size": 2, "group_size": 4},
    "reinforce": {**_RL, "batch_size": 2, "group_size": 4},
    "ppo_arithmetic": {**_RL, "batch_size": 4, "max_steps": 4, "eval_steps": 4, "save_steps": 2},
    # the reward model of the reward preset above (its output folder is filled in by record())
    "ppo": {**_RL, "rewards": [], "batch_size": 4, "data.eval_split": "[:4]", "max_steps": 8, "eval_steps": 4,
            "target_kl": 0.1},
}
CONFIG_FILE = {"grpo_kl_iterations": "grpo"}  # variants of a preset, for code paths the presets leave off
PRESETS = list(OVERRIDES)


def starts_a_word(prompts, completions, problems):
    """1 when the completion begins with a space: a reward a random model earns sometimes."""
    return [float(text.startswith(" ")) for text in completions]


TIMING = ("tokens_per_s", "_s", "time")


def _numbers(record: dict) -> dict:
    """The record's numbers and strings, without wall-clock figures (they differ run to run)."""
    kept = {}
    for key, value in record.items():
        if any(key.endswith(t) for t in TIMING) or key in ("final_model", "path"):
            continue
        if isinstance(value, dict):
            kept[key] = _numbers(value)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            kept[key] = value
    return kept


def _jsonl(path: Path) -> list[dict]:
    return [_numbers(json.loads(line)) for line in path.read_text().splitlines() if line] if path.is_file() else []


def fingerprint(folder: Path) -> dict[str, list[float]]:
    """Per saved tensor: sum, sum of squares, and a dot product with fixed random weights (float64)."""
    from safetensors.torch import load_file

    result = {}
    for file in sorted(folder.rglob("*.safetensors")):
        for name, tensor in sorted(load_file(file).items()):
            values = tensor.detach().double().flatten()
            probe = torch.randn(values.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            key = f"{file.relative_to(folder)}:{name}"
            result[key] = [float(values.sum()), float((values * values).sum()), float(values @ probe)]
    return result


def record(name: str, workdir: Path, reward_model: Path | None = None, extra: dict | None = None,
           overwrite: bool = True) -> dict:
    """``overwrite=False``: re-running into the same workdir resumes (the SIGKILL campaign, sigkill.py)."""
    from posttrain.api import train

    torch.set_num_threads(1)
    if str(Path(__file__).parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).parent))
    overrides = dict(_SMALL, **OVERRIDES[name], output_dir=str(workdir / name), overwrite_output_dir=overwrite,
                     **(extra or {}))
    if name == "ppo":
        overrides["reward_model"] = str(reward_model)
    out = workdir / name
    if not overwrite and (out / "evaluation.json").is_file():  # finished before a kill landed: read what it wrote
        evaluation = json.loads((out / "evaluation.json").read_text())
    else:
        evaluation = train(str(ROOT / "configs" / f"{CONFIG_FILE.get(name, name)}.yaml"),
                           overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    result = {
        "log_history": _jsonl(out / "log_history.jsonl"),
        "ppo_metrics": _jsonl(out / "ppo_metrics.jsonl"),
        "evaluation": _numbers(evaluation),
        "final": fingerprint(out / "final"),
    }
    text = json.dumps(result)
    if reward_model is not None:
        text = text.replace(str(reward_model), "REWARD_MODEL")
    return json.loads(text.replace(str(workdir), "WORKDIR"))  # paths as the same text in any folder


def record_all(workdir: Path) -> dict:
    results = {}
    for name in PRESETS:
        results[name] = record(name, workdir, reward_model=workdir / "reward" / "final" if name == "ppo" else None)
    return results


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = record_all(Path(tmp))
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    if "--write" in sys.argv:
        GOLDEN.write_text(text)
    else:
        sys.stdout.write(text)
