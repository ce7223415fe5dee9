"""What the metrics of one evaluation share: the evaluated model, the seed, generations, and the other models some
metrics need (a reference, a baseline, a judge, reward functions), each generated or loaded once.

Generations are cached by (model, prompts, sampling settings): verbosity, reward and win rate read the same greedy
answers to the same prompt set, so a suite pays for them once. Sampling is seeded per row
(``posttrain.rollout.choice``), so an evaluation is reproducible from its seed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError
from posttrain.models import adapters_disabled, is_peft_model, load_model
from posttrain.rollout import Rollout, SamplingParams, chat_prompts, sample


@dataclass
class ModelHandle:
    """A model to generate with or score under. ``adapters_off``: the evaluated LoRA model with its adapters switched
    off, i.e. the base it was fine-tuned from, at no extra memory."""

    label: str
    model: Any
    tokenizer: Any
    adapters_off: bool = False

    def active(self):
        """``with handle.active():`` the model behaves as this handle says (adapters off where asked)."""
        return adapters_disabled(self.model) if self.adapters_off else contextlib.nullcontext(self.model)


class EvalContext:
    def __init__(self, model, tokenizer, spec: str, seed: int = 0, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32):
        self.policy = ModelHandle(spec, model, tokenizer)
        self.seed, self.device, self.dtype, self.batch_size = seed, device, dtype, batch_size
        self._generations: dict[tuple, Rollout] = {}
        self._models: dict[str, ModelHandle] = {}
        self._rewards: dict[str, Any] = {}

    def generate(self, handle: ModelHandle, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                 samples: int = 1, top_p: float = 1.0) -> Rollout:
        """``samples`` completions per prompt (chat template applied; temperature 0 = greedy), batched on the rollout
        engine, computed once per distinct request."""
        key = (handle.label, handle.adapters_off, tuple(prompts), max_new_tokens, temperature, samples, top_p)
        if key not in self._generations:
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    seed=self.seed)
            with handle.active():
                self._generations[key] = sample(handle.model, handle.tokenizer, chat_prompts(handle.tokenizer, prompts),
                                                params, group_size=samples, batch_size=self.batch_size)
        return self._generations[key]

    def causal_lm(self, spec: str) -> ModelHandle:
        """The causal LM of a model spec, loaded once (the evaluated model itself when the spec is its own)."""
        if spec == self.policy.label:
            return self.policy
        if spec not in self._models:
            model, tokenizer = load_model(spec, self.dtype, self.device)
            model.eval().requires_grad_(False)
            self._models[spec] = ModelHandle(spec, model, tokenizer)
        return self._models[spec]

    def base_model(self, requested: str) -> ModelHandle | None:
        """The model to compare against (KL's reference, win rate's baseline): a model spec, or ``auto``: the model
        the evaluated one was fine-tuned from (a LoRA model with its adapters off; for a full fine-tune, the
        ``model`` in its run's ``config.json``), or None when that is unknown."""
        if requested != "auto":
            return self.causal_lm(requested)
        if is_peft_model(self.policy.model):
            base = next(iter(self.policy.model.peft_config.values())).base_model_name_or_path
            return ModelHandle(f"{base} (adapters off)", self.policy.model, self.policy.tokenizer, adapters_off=True)
        base = run_base_spec(self.policy.label)
        return self.causal_lm(base) if base else None

    def reward_function(self, specs: list[dict]):
        """``build_reward(specs)`` (``posttrain.rollout.rewards``), built once per distinct list of specs, so a reward
        model shared by two metrics is loaded once."""
        from posttrain.rollout.rewards import build_reward

        key = json.dumps(specs, sort_keys=True)
        if key not in self._rewards:
            self._rewards[key] = build_reward(specs)
        return self._rewards[key]

    def reward_model(self, path: str):
        """A reward model folder as a scorer ``(prompts, completions) -> scores``, loaded once."""
        from posttrain.rollout.rewards import RewardModelScorer

        key = f"model:{path}"
        if key not in self._rewards:
            self._rewards[key] = RewardModelScorer(path, device=self.device)
        return self._rewards[key]


def run_base_spec(spec: str) -> str | None:
    """For a run's ``final/`` (or ``final/merged/``): the ``model`` its training started from, read from the run's
    ``config.json``; None for anything else."""
    path = Path(spec)
    if not path.is_dir():
        return None
    for folder in (path.parent, path.parent.parent):
        config = read_run_config(folder / "config.json")
        if config is not None and isinstance(config.get("model"), str):
            return config["model"]
    return None


def read_run_config(path: Path) -> dict | None:
    """A posttrain run's resolved ``config.json`` (it names a ``method``; a transformers model config has a
    ``model_type`` instead), or None for any other file or none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "method" in data and "model_type" not in data else None


def require_same_vocabulary(a: ModelHandle, b: ModelHandle, purpose: str) -> None:
    """Token-level comparisons (KL, implicit rewards) need both models to read the same token ids."""
    if a.tokenizer is not b.tokenizer and a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ConfigError(f"{purpose} compares token log-probs, so {a.label!r} and {b.label!r} must share a "
                          "tokenizer; they do not")
