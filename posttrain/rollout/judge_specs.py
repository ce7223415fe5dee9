"""A judge from a config mapping: ``build_judge(spec)``. One key names the kind and its model (or rule); the others
are that kind's options; ``abstain_band`` is every kind's.

    judge: {pairwise: smollm2-135m-instruct, abstain_band: 0.05}           # template, labels, batch_size, cot,
                                                                           # cot_max_new_tokens, cot_suffix
    judge: {constitution: configs/constitutions/safety.yaml, model: smollm2-135m-instruct, seed: 0}
                                  # RL-CAI: a principle's judge question per pair; the pairwise options too
    judge: {constitution: configs/constitutions/safety.yaml, checkers: true}   # the principles' checkers decide
    judge: {pointwise: smollm2-135m-instruct, criterion: correct, mode: score}   # yes_no | score, template
    judge: {reference_guided: runs/grpo/final, samples: 8}                 # parser ("module:function"), temperature,
                                                                           # max_new_tokens, seed
    judge: {reward_model: runs/reward/final}                               # batch_size
    judge: {rule: arithmetic}                                              # a task's checker, or "module:function";
                                                                           # options: keyword arguments
    judge: {ensemble: [{rule: arithmetic, weight: 2}, {pairwise: smollm2-135m-instruct}]}

``llm`` is accepted for ``pairwise`` (the win-rate metric's earlier spelling).
"""

from __future__ import annotations

from typing import Any, Callable

from posttrain.errors import ConfigError
from posttrain.models.specs import EMBEDDED_DEFAULT
from posttrain.rollout.constitution import ConstitutionalJudge, checker_counts, load_constitution
from posttrain.rollout.judges import (
    EnsembleJudge,
    PairwiseJudge,
    PointwiseJudge,
    ReferenceGuidedJudge,
    RewardModelJudge,
    RuleJudge,
)
from posttrain.rollout.rewards import RewardModelScorer, RewardSpec, build_reward, load_function
from posttrain.tasks.registry import TASKS

DEFAULT_PARSER = "posttrain.tasks.arithmetic:extract_answer"
# kind -> the options it takes besides its own key and abstain_band
PAIRWISE_OPTIONS = {"labels", "batch_size", "cot", "cot_max_new_tokens", "cot_suffix"}
JUDGE_KINDS: dict[str, set[str]] = {
    "pairwise": {"template"} | PAIRWISE_OPTIONS,
    "constitution": {"model", "seed", "checkers"} | PAIRWISE_OPTIONS,
    "pointwise": {"criterion", "mode", "template", "batch_size"},
    "reference_guided": {"samples", "parser", "temperature", "max_new_tokens", "seed"},
    "reward_model": {"batch_size"},
    "rule": {"options"},
    "ensemble": set(),
}
ALIASES = {"llm": "pairwise"}
LoadLM = Callable[[str], tuple[Any, Any]]  # model spec -> (model, tokenizer)


def judge_kind(spec: Any, where: str = "judge") -> str:
    """The kind of a judge spec, after checking its keys (a ConfigError names ``where`` and the key)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{pairwise: MODEL}}, got {spec!r}")
    kinds = [k for k in spec if k in JUDGE_KINDS or k in ALIASES]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(JUDGE_KINDS)} (got {', '.join(kinds) or 'none'})")
    kind = ALIASES.get(kinds[0], kinds[0])
    allowed = JUDGE_KINDS[kind] | {kinds[0], "abstain_band"} | ({"weight"} if where.endswith("]") else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))} for a {kind} judge; allowed: "
                          f"{', '.join(sorted(allowed))}")
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ConfigError(f"{where}: weight must be a number > 0, got {weight!r}")
    band = spec.get("abstain_band", 0.0)
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not 0 <= band <= 0.5:
        raise ConfigError(f"{where}: abstain_band must be a number in [0, 0.5], got {band!r}")
    if kind == "ensemble":
        members = spec[kinds[0]]
        if not isinstance(members, list) or not members:
            raise ConfigError(f"{where}: ensemble must be a non-empty list of judges")
        for i, member in enumerate(members):
            judge_kind(member, f"{where}.ensemble[{i}]")
    return kind


def load_causal_lm(spec: str) -> tuple[Any, Any]:
    from posttrain.models import load_model

    model, tokenizer = load_model(spec)
    return model.eval().requires_grad_(False), tokenizer


def build_judge(spec: dict, load_lm: LoadLM | None = None, where: str = "judge",
                load_scorer: Callable[[str], Any] | None = None):
    """The judge ``spec`` describes (module docstring). ``load_lm`` loads a causal LM from a spec (default: ``load_model``,
    frozen), ``load_scorer`` a reward model folder (default: ``RewardModelScorer``); the evaluation harness passes its
    own, which load each model once."""
    kind = judge_kind(spec, where)
    load_lm = load_lm or load_causal_lm
    source = next(value for key, value in spec.items() if ALIASES.get(key, key) == kind)  # the model, rule, members
    band = float(spec.get("abstain_band", 0.0))
    if kind in ("pairwise", "constitution"):
        options = {k: spec[k] for k in ("template", "batch_size", "cot", "cot_max_new_tokens", "cot_suffix")
                   if k in spec}
        if "labels" in spec:
            options["labels"] = tuple(spec["labels"])
        if kind == "pairwise":
            return PairwiseJudge(*load_lm(source), abstain_band=band, **options)
        if not isinstance(source, str):
            raise ConfigError(f"{where}: constitution must be a constitution file, got {source!r}")
        if spec.get("checkers", False) is True:
            return RuleJudge(checker_counts(load_constitution(source)), f"{source} checkers")
        if spec.get("checkers", False) is not False:
            raise ConfigError(f"{where}: checkers must be true or false, got {spec['checkers']!r}")
        if isinstance(spec.get("seed", 0), bool) or not isinstance(spec.get("seed", 0), int):
            raise ConfigError(f"{where}: seed must be a whole number, got {spec['seed']!r}")
        return ConstitutionalJudge(load_constitution(source), *load_lm(spec.get("model", EMBEDDED_DEFAULT)),
                                   seed=spec.get("seed", 0), abstain_band=band, **options)
    if kind == "pointwise":
        options = {k: spec[k] for k in ("criterion", "mode", "template", "batch_size") if k in spec}
        return PointwiseJudge(*load_lm(source), abstain_band=band, **options)
    if kind == "reference_guided":
        options = {k: spec[k] for k in ("samples", "temperature", "max_new_tokens", "seed") if k in spec}
        parser = load_function(spec.get("parser", DEFAULT_PARSER))
        return ReferenceGuidedJudge(*load_lm(source), parser=parser, abstain_band=band, **options)
    if kind == "reward_model":
        options = {"batch_size": spec["batch_size"]} if "batch_size" in spec else {}
        scorer = load_scorer(source) if load_scorer else RewardModelScorer(source, **options)
        return RewardModelJudge(scorer, band)
    if kind == "rule":
        if not isinstance(source, str):
            raise ConfigError(f"{where}: rule must be a task ({', '.join(TASKS)}) or 'module:function', got {source!r}")
        entry = RewardSpec(**{"name" if source in TASKS else "function": source}, options=spec.get("options", {}))
        reward = build_reward([entry])
        return RuleJudge(lambda prompts, completions, problems: reward(prompts, completions, problems)[0], source)
    members = [(float(m.get("weight", 1.0)), build_judge({k: v for k, v in m.items() if k != "weight"}, load_lm,
                                                         f"{where}.ensemble[{i}]", load_scorer))
               for i, m in enumerate(source)]
    return EnsembleJudge(members, band)
