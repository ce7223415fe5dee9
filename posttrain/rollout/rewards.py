"""Reward functions: one signature, weighted combinations, loading user callables by name, and a trained reward
model as a reward function (``RewardModelScorer``).

Every reward function has the signature

    reward_fn(prompts: list[str], completions: list[str], problems: list[Problem]) -> list[float]

(one finite value per completion). A config lists the rewards to use, each a task's checker or a user callable:

    rewards:
      - {name: arithmetic, weight: 1.0}                          # the task's checker (options build a new task)
      - {function: "mypkg.rewards:brevity", weight: 0.5, options: {limit: 30}}   # options become keyword arguments
      - {model: runs/reward/final, weight: 1.0, options: {batch_size: 16}}      # a trained reward model's score

and the total is the weighted sum, ``total_i = sum_k weight_k * reward_k(...)_i``, with each reward's per-sample
values returned beside it for logging.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch

from posttrain.data.batching import collate_sequences
from posttrain.data.tokenize import as_messages, encode_prompt_completion
from posttrain.errors import ConfigError, DataError, ModelLoadError
from posttrain.models.reward_model import load_reward_model, sequence_scores
from posttrain.tasks.base import Problem, RewardFn, Task
from posttrain.tasks.registry import TASKS, get_task


@dataclass
class RewardSpec:
    """One entry of a config's reward list: exactly one of `name` (a task), `function` ("module:function") or
    `model` (a reward model folder, e.g. a reward run's final/)."""

    name: str | None = None
    function: str | None = None
    model: str | None = None
    weight: float = 1.0
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if sum(source is not None for source in (self.name, self.function, self.model)) != 1:
            raise ConfigError(f"reward {self}: give exactly one of 'name' (a task: {', '.join(TASKS)}), "
                              f"'function' ('module:function') or 'model' (a reward model folder)")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ConfigError(f"reward {self.label!r}: weight must be a finite number, got {self.weight!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"reward {self.label!r}: options must be a mapping, got {self.options!r}")

    @property
    def label(self) -> str:
        """The name its values are logged under."""
        return next(source for source in (self.name, self.function, self.model) if source is not None)

    @classmethod
    def from_dict(cls, entry: dict) -> "RewardSpec":
        if not isinstance(entry, dict):
            raise ConfigError(f"a reward entry must be a mapping like {{'name': 'arithmetic', 'weight': 1.0}}, "
                              f"got {entry!r}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise ConfigError(f"reward {entry!r}: unknown key {', '.join(map(repr, unknown))}; "
                              f"allowed keys: {', '.join(allowed)}")
        return cls(**entry)


def load_function(spec: str):
    """The callable named by "package.module:function" (or "module:Class.method")."""
    module_name, sep, attr_path = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"reward function {spec!r}: expected 'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"reward function {spec!r}: cannot import module {module_name!r} ({exc})") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"reward function {spec!r}: {getattr(obj, '__name__', module_name)!r} has no "
                              f"attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"reward function {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def check_rewards(values, n: int, label: str) -> list[float]:
    """`values` as a list of `n` finite floats, or a ConfigError naming the reward function and the bad value."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ConfigError(f"reward function {label!r} must return a list of {n} numbers, got {type(values).__name__}")
    values = list(values)
    if len(values) != n:
        raise ConfigError(f"reward function {label!r} returned {len(values)} values for {n} completions")
    out = []
    for i, value in enumerate(values):
        try:
            number = float(value) if not isinstance(value, (str, bytes)) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"reward function {label!r} returned {value!r} for completion {i}; "
                              f"rewards must be finite numbers")
        out.append(number)
    return out


@dataclass(frozen=True)
class WeightedReward:
    label: str
    weight: float
    fn: RewardFn


class CombinedReward:
    """Several reward functions with weights. Calling it returns (totals, {label: per-sample values}); labels repeat
    nowhere (a second "arithmetic" is logged as "arithmetic_2")."""

    def __init__(self, parts: Sequence[WeightedReward]):
        if not parts:
            raise ConfigError("no reward functions given")
        self.parts: list[WeightedReward] = []
        for part in parts:
            label, k = part.label, 1
            while label in self.labels:
                k += 1
                label = f"{part.label}_{k}"
            self.parts.append(WeightedReward(label, part.weight, part.fn))

    @property
    def labels(self) -> list[str]:
        """The names the per-function values are returned (and logged) under, in order."""
        return [part.label for part in self.parts]

    def __call__(self, prompts: list[str], completions: list[str], problems: list[Problem]
                 ) -> tuple[list[float], dict[str, list[float]]]:
        n = len(completions)
        if not len(prompts) == len(problems) == n:
            raise ValueError(f"{len(prompts)} prompts, {n} completions and {len(problems)} problems: need one each")
        per_function = {part.label: check_rewards(part.fn(prompts, completions, problems), n, part.label)
                        for part in self.parts}
        totals = [sum(part.weight * per_function[part.label][i] for part in self.parts) for i in range(n)]
        return totals, per_function


def build_reward(specs: Sequence[RewardSpec | dict] | None, task: Task | None = None) -> CombinedReward:
    """The combined reward of `specs` (RewardSpec or config dicts). A spec naming `task` (the one being trained on)
    without options uses that task's checker as configured; no specs at all means `task`'s checker, weight 1."""
    if not specs:
        if task is None:
            raise ConfigError("no rewards configured and no task to take the reward from")
        specs = [RewardSpec(name=task.name)]
    parts = []
    for spec in specs:
        spec = spec if isinstance(spec, RewardSpec) else RewardSpec.from_dict(spec)
        if spec.name is not None:
            same_task = task is not None and spec.name == task.name and not spec.options
            fn = (task if same_task else get_task(spec.name, **spec.options)).reward_fn()
        elif spec.function is not None:
            fn = load_function(spec.function)
            if spec.options:
                fn = functools.partial(fn, **spec.options)
        else:
            fn = reward_model_function(spec.model, spec.options)
        parts.append(WeightedReward(spec.label, float(spec.weight), fn))
    return CombinedReward(parts)


def reward_model_function(path: str, options: dict) -> RewardFn:
    """A trained reward model's score of prompt + completion, loaded once (``RewardModelScorer``).
    ``options``: batch_size, max_length, device, dtype."""
    allowed = {"batch_size", "max_length", "device", "dtype"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"reward model {path!r}: unknown option {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return RewardModelScorer(path, **options)


class RewardModelScorer:
    """A saved reward model as a reward function ``fn(prompts, completions, problems) -> list[float]``.

    Each prompt + completion is formatted as in training (``encode_prompt_completion``: the chat template when the
    tokenizer has one; ``encode``) and scored in length-sorted batches under ``torch.no_grad``. Sequences longer than
    ``max_length`` keep their last tokens (the scored end)."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 1024, device: str = "auto",
                 dtype: str = "auto"):
        if not Path(path).is_dir():
            raise ModelLoadError(f"reward model {path!r}: no such folder (a reward run's final/ or final/merged/)")
        self.model, self.tokenizer = load_reward_model(path, dtype, device)
        self.model.eval().requires_grad_(False)
        self.batch_size, self.max_length = batch_size, max_length
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.device = next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], problems=None) -> list[float]:
        sequences = []
        for prompt, completion in zip(prompts, completions):
            prompt_ids, completion_ids = self.encode(prompt, completion)
            cut = max(0, len(prompt_ids) + len(completion_ids) - self.max_length)
            sequences.append((prompt_ids[cut:], completion_ids[max(0, cut - len(prompt_ids)):]))
        order = sorted(range(len(sequences)), key=lambda i: sum(map(len, sequences[i])))
        scores = [0.0] * len(sequences)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = collate_sequences([sequences[i] for i in chunk], self.tokenizer.pad_token_id)
            values = sequence_scores(self.model, {k: v.to(self.device) for k, v in batch.items()})
            for i, value in zip(chunk, values.tolist()):
                scores[i] = value
        return scores

    def encode(self, prompt, completion) -> tuple[list[int], list[int]]:
        """Ids as training tokenized them. A sampled completion can make the template's prompt tokenize differently
        inside the whole (a completion starting with newlines merges with the prompt's last one): training refuses
        such a pair, a reward scores the whole conversation as tokenized."""
        try:
            return encode_prompt_completion(self.tokenizer, prompt, completion, self.chat)
        except DataError:
            messages = as_messages(prompt, "user") + as_messages(completion, "assistant")
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            return [], self.tokenizer(text, add_special_tokens=False)["input_ids"]
