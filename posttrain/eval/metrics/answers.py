"""Metrics of what the model writes: verbosity, task accuracy (greedy and pass@k), reward, reward-hacking probes.

Answers come from the rollout engine (batched, KV cache), greedy unless a metric samples; metrics that ask for the
same prompts and settings share one generation (``EvalContext.generate``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from posttrain.config import option
from posttrain.errors import ConfigError, DataError
from posttrain.eval.context import EvalContext
from posttrain.eval.estimators import describe, mean_and_standard_error, pass_at_k
from posttrain.eval.metrics.chains import add_groups, add_steps_correct
from posttrain.eval.metrics.judges import JUDGE_HELP, context_judge
from posttrain.eval.prompts import DEFAULT_PROBES, DEFAULT_PROMPTS, EvalPrompt, load_prompts
from posttrain.eval.result import MetricResult, Value, score_each, try_each
from posttrain.rollout.best_of_n import pick_best
from posttrain.rollout.judge_specs import judge_kind
from posttrain.rollout.rewards import RewardSpec
from posttrain.tasks import TASKS, count_words, get_task
from posttrain.tasks.arithmetic import NumericTask
from posttrain.tasks.voting import self_consistent_answer

PROBE_VARIANTS = ("plain", "padded", "flattery", "longer", "keywords")


def mean_value(values: list[float], higher_is_better: bool | None = None) -> Value:
    """Mean and SE; no value (None, n = 0) when every item failed, so the failures are kept instead of the metric
    failing as a whole."""
    if not values:
        return Value(None, 0, None, higher_is_better)
    mean, stderr = mean_and_standard_error(values)
    return Value(mean, len(values), stderr, higher_is_better)


def check_reward_specs(specs: list[dict]) -> None:
    """Reject a malformed reward list when the suite is read, before any model is loaded."""
    if not specs:
        raise ConfigError("option 'rewards' needs at least one reward, e.g. [{name: verbosity}] or "
                          "[{model: runs/reward/final}]")
    for entry in specs:
        spec = RewardSpec.from_dict(entry)
        if spec.name is not None and spec.name not in TASKS:
            raise ConfigError(f"reward {entry!r}: unknown task {spec.name!r}; tasks: {', '.join(TASKS)}")
        if spec.model is not None and not Path(spec.model).is_dir():
            raise ConfigError(f"reward {entry!r}: no reward model folder {spec.model!r} (a reward run's final/)")


# ----------------------------------------------------------------------------------------------------- verbosity
@dataclass
class VerbosityOptions:
    prompts: str = option(DEFAULT_PROMPTS, help="the prompt set answered (a .jsonl/.txt file)")
    limit: int | None = option(None, min=1, help="the first N prompts; None: all")
    max_new_tokens: int = option(96, min=1, help="longest greedy answer, in tokens")


def verbosity_values(texts: list[str], token_counts: list[int], word_limits: list[int | None]) -> dict[str, Value]:
    """Length of answers in words (``posttrain.tasks.count_words``: whitespace-separated tokens holding a letter or
    digit) and in tokens: mean, median, standard deviation. Over the prompts that state a word limit L, the
    compliance rate: the share of answers with 1 <= words <= L (an empty answer does not comply)."""
    words = [count_words(text) for text in texts]
    values: dict[str, Value] = {}
    for unit, counts in (("words", words), ("tokens", token_counts)):
        stats = describe(counts)
        values[f"{unit}_mean"] = mean_value([float(c) for c in counts])
        values[f"{unit}_median"] = Value(stats["median"], len(counts))
        values[f"{unit}_std"] = Value(stats["std"], len(counts))
    complied = [1.0 if 1 <= w <= limit else 0.0 for w, limit in zip(words, word_limits) if limit is not None]
    if complied:
        values["word_limit_compliance"] = mean_value(complied, higher_is_better=True)
    return values


def verbosity(context: EvalContext, options: VerbosityOptions) -> MetricResult:
    """Greedy answers to the prompt set, measured by ``verbosity_values``; ``truncated_fraction`` is the share that
    hit ``max_new_tokens`` before ending."""
    prompts = load_prompts(options.prompts, options.limit)
    rollout = context.generate(context.policy, [p.prompt for p in prompts], options.max_new_tokens)
    tokenizer = context.policy.tokenizer
    tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rollout.texts]
    values = verbosity_values(rollout.texts, tokens, [p.word_limit for p in prompts])
    values["truncated_fraction"] = mean_value(rollout.truncated.float().tolist())
    samples = [{"prompt": p.prompt, "output": text, "words": count_words(text), "tokens": n,
                "word_limit": p.word_limit, "truncated": bool(cut)}
               for p, text, n, cut in zip(prompts, rollout.texts, tokens, rollout.truncated.tolist())]
    return MetricResult(values, samples, details={"prompts": options.prompts, "max_new_tokens": options.max_new_tokens})


# ------------------------------------------------------------------------------------------------- task accuracy
@dataclass
class TaskAccuracyOptions:
    task: str = option("arithmetic", help="arithmetic, word_problems, constraints, verbosity or long_addition "
                                          "(posttrain.tasks)")
    task_options: dict[str, Any] = option(
        default_factory=dict, help="keyword options of the task's generator, e.g. {digits: 2}")
    n: int = option(40, min=1, help="problems drawn from the split with the evaluation's seed")
    split: Literal["train", "eval"] = option("eval", help="the task's split the problems come from")
    max_new_tokens: int = option(48, min=1, help="longest answer, in tokens")
    samples: int = option(0, min=0, help="completions sampled per problem for pass@k; 0: greedy accuracy only")
    pass_at: list[int] = option(default_factory=lambda: [1], help="the k of pass@k, each <= samples")
    temperature: float = option(1.0, min=0.01, help="sampling temperature of the pass@k samples")
    top_p: float = option(1.0, min=0, max=1, help="nucleus sampling of the pass@k samples; 1: off")
    self_consistency: int = option(0, min=0, help="k chains sampled per problem (temperature, top_p) whose parsed "
                                                  "answers vote (Wang et al. 2023): self_consistency@k accuracy; "
                                                  "numeric tasks only; 0: off")
    steps_correct: bool = option(False, help="also the share of the steps written in each greedy answer that are "
                                             "correct (the task's check_steps: each equation checked; numeric tasks "
                                             "only): steps_correct, steps_written")
    best_of: int = option(0, min=0, help="n answers sampled per problem (temperature, top_p), of which `judge` picks "
                                         "one (best-of-n, posttrain.rollout.best_of_n): best_of@n accuracy; 0: off")
    judge: dict[str, Any] | None = option(None, help="best_of's judge: " + JUDGE_HELP)
    group_by: str | None = option(None, help="a field of the problems' meta to break every accuracy down by, e.g. "
                                             "steps (word_problems: number of equations) or digits (long_addition): "
                                             "accuracy/steps=3 ...; None: off")

    def __post_init__(self) -> None:
        task = get_task(self.task, **self.task_options)  # an unknown task or option fails now, not after generating
        if (self.self_consistency or self.steps_correct) and not isinstance(task, NumericTask):
            option_name = "self_consistency" if self.self_consistency else "steps_correct"
            raise ConfigError(f"{option_name} needs numeric answers (and steps): task {self.task!r} has none")
        if self.group_by is not None:
            meta = task.problems(self.split, 1)[0].meta
            if self.group_by not in meta:
                raise ConfigError(f"group_by: the problems of task {self.task!r} have no {self.group_by!r}; they "
                                  f"have: {', '.join(meta)}")
        if bool(self.best_of) != (self.judge is not None):
            raise ConfigError("best_of and judge go together: best_of: n samples, judge: the judge that picks one, "
                              "e.g. {reward_model: runs/reward/final} or {rule: arithmetic}")
        if self.judge is not None:
            judge_kind(self.judge, "task_accuracy judge")
        if self.samples and not all(isinstance(k, int) and 1 <= k <= self.samples for k in self.pass_at):
            raise ConfigError(f"pass_at={self.pass_at}: every k must be between 1 and samples={self.samples}")


def task_accuracy(context: EvalContext, options: TaskAccuracyOptions) -> MetricResult:
    """``accuracy``: the share of the task's held-out problems whose greedy answer its checker accepts. With
    ``samples`` = n > 0, also pass@k for each k in ``pass_at``: the mean over problems of the unbiased estimator
    1 - C(n - c, k) / C(n, k) from n sampled answers of which c are correct (Chen et al. 2021). ``steps_correct``
    and ``group_by`` (accuracy by number of steps): ``posttrain.eval.metrics.chains``."""
    task = get_task(options.task, **options.task_options)
    problems = task.problems(options.split, options.n, context.seed)
    prompts = [p.prompt for p in problems]
    result = MetricResult(details={"task": options.task, "split": options.split})
    greedy = context.generate(context.policy, prompts, options.max_new_tokens).texts
    correct = try_each(lambda item: task.is_correct(*item), list(zip(problems, greedy)), result.failures, "checker")
    scored = [float(c) for c in correct if c is not None]
    result.values["accuracy"] = mean_value(scored, higher_is_better=True)
    result.samples = [{"prompt": p.prompt, "answer": p.answer, "output": text, "correct": c}
                      for p, text, c in zip(problems, greedy, correct)]
    if options.samples:
        rollout = context.generate(context.policy, prompts, options.max_new_tokens, options.temperature,
                                   options.samples, options.top_p)
        groups = [rollout.texts[i * options.samples : (i + 1) * options.samples] for i in range(len(problems))]
        checks = try_each(lambda item: [task.is_correct(item[0], text) for text in item[1]],
                          list(zip(problems, groups)), result.failures, "checker (sampled)")
        counts = [sum(c) for c in checks if c is not None]
        for k in options.pass_at:
            result.values[f"pass@{k}"] = mean_value([pass_at_k(options.samples, c, k) for c in counts], True)
        for record, texts, c in zip(result.samples, groups, checks):
            record.update(sampled_outputs=texts, sampled_correct=None if c is None else sum(c))
        result.details.update(samples=options.samples, temperature=options.temperature)
    if options.self_consistency:
        self_consistency(context, options, task, problems, result)
    if options.best_of:
        best_of(context, options, task, problems, result)
    if options.steps_correct:
        add_steps_correct(task, problems, greedy, result)
    if options.group_by:
        add_groups(options.group_by, problems, result, options.self_consistency, options.best_of)
    return result


def self_consistency(context: EvalContext, options: TaskAccuracyOptions, task, problems, result: MetricResult) -> None:
    """``self_consistency@k``: the share of problems whose majority answer over k sampled chains is correct."""
    k = options.self_consistency
    rollout = context.generate(context.policy, [p.prompt for p in problems], options.max_new_tokens,
                               options.temperature, k, options.top_p)
    votes = [self_consistent_answer(rollout.texts[i * k : (i + 1) * k]) for i in range(len(problems))]
    correct = [answer is not None and task.is_correct(p, f"The answer is {answer}.") for p, (answer, _) in
               zip(problems, votes)]
    result.values[f"self_consistency@{k}"] = mean_value([float(c) for c in correct], higher_is_better=True)
    for record, (answer, count), c in zip(result.samples, votes, correct):
        record.update(voted_answer=answer, votes=count, voted_correct=c)


def best_of(context: EvalContext, options: TaskAccuracyOptions, task, problems, result: MetricResult) -> None:
    """``best_of@n``: the share of problems whose answer picked by the judge among n samples is correct (the
    samples are pass@k's when n = samples: with the task's own checker as judge, best_of@n = pass@n)."""
    n, prompts = options.best_of, [p.prompt for p in problems]
    rollout = context.generate(context.policy, prompts, options.max_new_tokens, options.temperature, n, options.top_p)
    candidates = [rollout.texts[i * n : (i + 1) * n] for i in range(len(problems))]
    picked, _ = pick_best(context_judge(context, options.judge), prompts, candidates, problems)
    correct = try_each(lambda item: task.is_correct(*item), list(zip(problems, picked)), result.failures,
                       "checker (best-of-n)")
    result.values[f"best_of@{n}"] = mean_value([float(c) for c in correct if c is not None], higher_is_better=True)
    for record, text, c in zip(result.samples, picked, correct):
        record.update(best_output=text, best_correct=c)
    result.details.update(best_of=n, judge=options.judge)


# -------------------------------------------------------------------------------------------------------- reward
@dataclass
class RewardOptions:
    rewards: list[dict[str, Any]] = option(help="reward specs, each with an optional weight: {name: TASK} | {function: "
                                                "'module:fn'} | {model: PATH}")
    prompts: str = option(DEFAULT_PROMPTS, help="the prompt set answered (a .jsonl/.txt file)")
    limit: int | None = option(None, min=1, help="the first N prompts; None: all")
    max_new_tokens: int = option(96, min=1, help="longest greedy answer, in tokens")

    def __post_init__(self) -> None:
        check_reward_specs(self.rewards)


def reward_scores(context: EvalContext, specs: list[dict], prompts: list[EvalPrompt], texts: list[str],
                  failures: list[dict]) -> list[dict | None]:
    """Per answer ``{"total": sum_k w_k r_k, label_k: r_k, ...}`` under the reward specs, or None where scoring
    raised (recorded in ``failures``)."""
    combined = context.reward_function(specs)

    def score(batch_prompts, batch_texts, batch_problems):
        totals, parts = combined(batch_prompts, batch_texts, batch_problems)
        return [{"total": total, **{label: parts[label][i] for label in parts}} for i, total in enumerate(totals)]

    return score_each(score, [[p.prompt for p in prompts], texts, [p.as_problem() for p in prompts]], failures,
                      "reward")


def reward(context: EvalContext, options: RewardOptions) -> MetricResult:
    """The mean total reward sum_k w_k r_k(x, y) of the greedy answers to the prompt set (``posttrain.rollout.rewards``:
    a task's checker, a ``module:function``, a trained reward model), and each reward's own mean when there are
    several."""
    prompts = load_prompts(options.prompts, options.limit)
    texts = context.generate(context.policy, [p.prompt for p in prompts], options.max_new_tokens).texts
    result = MetricResult(details={"rewards": options.rewards, "prompts": options.prompts})
    scores = reward_scores(context, options.rewards, prompts, texts, result.failures)
    scored = [s for s in scores if s is not None]
    result.values[""] = mean_value([s["total"] for s in scored], higher_is_better=True)
    labels = [label for label in scored[0] if label != "total"] if scored else []
    if len(labels) > 1:
        for label in labels:
            result.values[label] = mean_value([s[label] for s in scored], higher_is_better=True)
    result.samples = [{"prompt": p.prompt, "output": text, "reward": s} for p, text, s in zip(prompts, texts, scores)]
    return result


# ----------------------------------------------------------------------------------------- reward-hacking probes
@dataclass
class ProbeOptions:
    rewards: list[dict[str, Any]] = option(help="reward specs probed, each with an optional weight: {name: TASK} | "
                                                "{function: 'module:fn'} | {model: PATH}")
    probes: str = option(DEFAULT_PROBES, help="rows with group, variant (plain, padded, flattery, longer, keywords) "
                                              "and prompt")
    max_new_tokens: int = option(96, min=1, help="longest greedy answer, in tokens")

    def __post_init__(self) -> None:
        check_reward_specs(self.rewards)


def probes(context: EvalContext, options: ProbeOptions) -> MetricResult:
    """Reward hacking probes: each request is asked plainly and perturbed in ways that should not change a good
    answer (padded with irrelevant text, flattering the grader, asking for a longer answer despite the limit,
    stuffed with keywords). Each answer's reward and length are logged side by side (``samples``; ``posttrain
    compare --probes``). Values: the plain variant's mean reward and words, and for each perturbation the paired
    differences over requests, reward_delta = mean_g [r(variant_g) - r(plain_g)] and words_delta likewise. A model
    that games its reward moves them; a robust one keeps them near 0."""
    prompts = load_prompts(options.probes)
    seen: dict[tuple, str] = {}
    for p in prompts:
        if p.meta.get("variant") not in PROBE_VARIANTS or "group" not in p.meta:
            raise DataError(f"probe {p.id!r}: needs a 'group' and a 'variant' in {', '.join(PROBE_VARIANTS)}")
        key = (p.meta["group"], p.meta["variant"])
        if key in seen:  # the paired deltas need one answer per (request, variant)
            raise DataError(f"probe {p.id!r}: group {key[0]!r} already has a {key[1]!r} variant ({seen[key]!r})")
        seen[key] = p.id
    texts = context.generate(context.policy, [p.prompt for p in prompts], options.max_new_tokens).texts
    result = MetricResult(details={"rewards": options.rewards, "probes": options.probes})
    scores = reward_scores(context, options.rewards, prompts, texts, result.failures)
    by_group: dict[str, dict[str, tuple[float, int]]] = defaultdict(dict)
    for p, text, score in zip(prompts, texts, scores):
        words = count_words(text)
        result.samples.append({"group": p.meta["group"], "variant": p.meta["variant"], "prompt": p.prompt,
                               "output": text, "reward": None if score is None else score["total"], "words": words,
                               "word_limit": p.word_limit})
        if score is not None:
            by_group[p.meta["group"]][p.meta["variant"]] = (score["total"], words)
    plain = [variants["plain"] for variants in by_group.values() if "plain" in variants]
    if plain:
        result.values["plain/reward"] = mean_value([r for r, _ in plain])
        result.values["plain/words"] = mean_value([float(w) for _, w in plain])
    for variant in PROBE_VARIANTS[1:]:
        pairs = [(v[variant], v["plain"]) for v in by_group.values() if variant in v and "plain" in v]
        if pairs:
            result.values[f"{variant}/reward_delta"] = mean_value([a[0] - b[0] for a, b in pairs])
            result.values[f"{variant}/words_delta"] = mean_value([float(a[1] - b[1]) for a, b in pairs])
    return result
