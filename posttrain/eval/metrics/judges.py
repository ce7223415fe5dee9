"""Metrics that ask a judge (``posttrain.rollout.judges``): win rate against a baseline model, and the quality of a
judge itself on pairs whose better answer is known.

Win rate. Per prompt the judge gives p = P(the evaluated model's answer is better than the baseline's); an LM judge
reads both orders and averages their log-odds, so a constant position bias cancels (Zheng et al. 2023, "Judging
LLM-as-a-Judge", https://arxiv.org/abs/2306.05685, sec. 3.3). A prompt is won (1) when p > 1/2, lost (0) when p < 1/2,
and counts 1/2 when p = 1/2, the judge abstains, or the two answers are identical (not judged):

    win_rate = mean_x win(x)        win_probability = mean_x p(x)

Judge quality (``judge_agreement``), on rows prompt / chosen / rejected where chosen is known to be better:

    agreement           share of the pairs the judge decided where it prefers chosen (the headline)
    agreement_all       the same over all pairs, an abstention counting 1/2 (so abstaining is never a free win)
    abstention_rate     share of pairs without a preference
    position_consistency  share of pairs where both presentation orders prefer the same answer (LM pairwise judges)
    calibration/LO-HI   agreement among decided pairs whose confidence max(p, 1 - p) lies in [LO, HI): a calibrated
                        judge agrees about as often as it is confident
    COLUMN/VALUE        with group_by: agreement among the decided pairs of each value of that column
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posttrain.config import option
from posttrain.data import load_rows
from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext
from posttrain.eval.estimators import mean_and_standard_error
from posttrain.eval.metrics.likelihood import NO_BASE
from posttrain.eval.prompts import DEFAULT_PREFERENCE_DATA, DEFAULT_PROMPTS, load_prompts, resolve_path
from posttrain.eval.result import MetricResult, Value, score_each
from posttrain.models.specs import EMBEDDED_DEFAULT
from posttrain.rollout.judge_specs import build_judge, judge_kind
from posttrain.rollout.judges import Verdict
from posttrain.tasks import Problem

JUDGE_HELP = ("the judge: {pairwise: SPEC} (log-prob verdict, both orders; cot: true to reason first), {pointwise: "
              "SPEC, criterion, mode}, {reference_guided: SPEC, samples}, {reward_model: PATH}, {rule: TASK or "
              "'module:fn'}, {constitution: FILE, model: SPEC}, {ensemble: [...]}; abstain_band for any "
              "(posttrain.rollout.judge_specs); a fixed judge keeps runs comparable")


def context_judge(context: EvalContext, spec: dict):
    """The judge of ``spec`` with the context's models (each loaded once per evaluation)."""
    def load_lm(model_spec: str):
        handle = context.causal_lm(model_spec)
        return handle.model, handle.tokenizer

    return build_judge(spec, load_lm, load_scorer=context.reward_model)


def win_of(verdict: Verdict) -> float:
    return {0: 1.0, 1: 0.0, None: 0.5}[verdict.preferred]


def mean_value(values: list[float], higher_is_better: bool | None) -> Value:
    mean, stderr = mean_and_standard_error(values)
    return Value(mean, len(values), stderr, higher_is_better)


@dataclass
class WinRateOptions:
    baseline: str = option("auto", help="the model answers are compared with: a model spec, or auto: the model the "
                                        "evaluated one was fine-tuned from")
    judge: dict[str, Any] = option(default_factory=lambda: {"pairwise": EMBEDDED_DEFAULT}, help=JUDGE_HELP)
    prompts: str = option(DEFAULT_PROMPTS, help="the prompt set answered (a .jsonl/.txt file)")
    limit: int | None = option(None, min=1, help="the first N prompts; None: all")
    max_new_tokens: int = option(96, min=1, help="longest greedy answer, in tokens")

    def __post_init__(self) -> None:
        judge_kind(self.judge, "win_rate judge")


def win_rate(context: EvalContext, options: WinRateOptions) -> MetricResult:
    """The mean of win(x) over the prompt set (module docstring): greedy answers of the evaluated model against the
    baseline's. 1/2 is a draw with the baseline."""
    baseline = context.base_model(options.baseline)
    if baseline is None:
        return MetricResult(skipped=NO_BASE.replace("reference", "baseline"))
    judge = context_judge(context, options.judge)
    prompts = [p.prompt for p in load_prompts(options.prompts, options.limit)]
    answers = context.generate(context.policy, prompts, options.max_new_tokens).texts
    baseline_answers = context.generate(baseline, prompts, options.max_new_tokens).texts
    differ = [i for i in range(len(prompts)) if answers[i] != baseline_answers[i]]
    failures: list[dict] = []
    columns = [[prompts[i] for i in differ], [answers[i] for i in differ], [baseline_answers[i] for i in differ]]
    judged = score_each(judge, columns, failures, "judge") if differ else []
    failures = [dict(f, index=differ[f["index"]]) for f in failures]
    verdicts: list[Verdict | None] = [Verdict(0.5) for _ in prompts]  # identical answers: a tie, not judged
    for i, verdict in zip(differ, judged):
        verdicts[i] = verdict
    scored = [v for v in verdicts if v is not None]
    values = {"": mean_value([win_of(v) for v in scored], True),
              "win_probability": mean_value([v.probability for v in scored], True)}
    asked = [v for i, v in zip(differ, judged) if v is not None]
    if asked:
        values["abstention_rate"] = mean_value([float(v.abstained) for v in asked], None)
    consistency = [float(v.consistent) for v in asked if v.consistent is not None]
    if consistency:
        values["position_consistency"] = mean_value(consistency, True)
    samples = [{"prompt": p, "output": a, "baseline_output": b,
                **({"win": win_of(v), **v.to_dict()} if v is not None else {"win": None})}
               for p, a, b, v in zip(prompts, answers, baseline_answers, verdicts)]
    return MetricResult(values, samples, failures, {"baseline": baseline.label, **options.judge})


@dataclass
class JudgeAgreementOptions:
    pairs: str = option(DEFAULT_PREFERENCE_DATA, help="labelled pairs: prompt / chosen / rejected rows, chosen the "
                                                      "better (optional answer column for rule judges)")
    judge: dict[str, Any] = option(default_factory=lambda: {"pairwise": EMBEDDED_DEFAULT}, help=JUDGE_HELP)
    limit: int | None = option(None, min=1, help="the first N pairs; None: all")
    bins: int = option(5, min=1, max=50, help="confidence bins between 1/2 and 1 for calibration")
    group_by: str | None = option(None, help="a column of the pair file (e.g. kind): agreement per value too")

    def __post_init__(self) -> None:
        judge_kind(self.judge, "judge_agreement judge")


def judge_agreement(context: EvalContext, options: JudgeAgreementOptions) -> MetricResult:
    """How well a judge agrees with known preferences (module docstring). The evaluated model is not used unless the
    judge names it."""
    rows = load_rows(resolve_path(options.pairs))[: options.limit]
    for row in rows:
        missing = [c for c in ("prompt", "chosen", "rejected") if not isinstance(row.values.get(c), str)]
        if missing:
            raise ConfigError(f"{row.where}: a labelled pair needs text columns prompt, chosen and rejected "
                              f"(missing or not text: {', '.join(missing)})")
    columns = [[r.values[c] for r in rows] for c in ("prompt", "chosen", "rejected")]
    problems = [Problem(r.values["prompt"], str(r.values.get("answer", "")), dict(r.values)) for r in rows]
    failures: list[dict] = []
    verdicts = score_each(context_judge(context, options.judge), [*columns, problems], failures, "judge")
    quality = judge_quality([v for v in verdicts if v is not None], options.bins)
    if options.group_by:
        for group in sorted({str(r.values.get(options.group_by)) for r in rows}):
            decided = [v for r, v in zip(rows, verdicts) if v is not None and v.preferred is not None
                       and str(r.values.get(options.group_by)) == group]
            if decided:
                quality[f"{options.group_by}/{group}"] = mean_value([float(v.preferred == 0) for v in decided], True)
    samples = [{"prompt": r.values["prompt"], "chosen": r.values["chosen"], "rejected": r.values["rejected"],
                **(v.to_dict() if v is not None else {})} for r, v in zip(rows, verdicts)]
    return MetricResult(quality, samples, failures, dict(options.judge))


def judge_quality(verdicts: list[Verdict], bins: int = 5) -> dict[str, Value]:
    """The judge-quality values of the module docstring, for verdicts on (prompt, chosen, rejected): the first
    response is the better one."""
    decided = [v for v in verdicts if v.preferred is not None]
    agreement = mean_value([float(v.preferred == 0) for v in decided], True) if decided else Value(None, 0, None, True)
    values = {"": agreement,
              "agreement_all": mean_value([win_of(v) for v in verdicts], True),
              "abstention_rate": mean_value([float(v.preferred is None) for v in verdicts], None)}
    consistency = [float(v.consistent) for v in verdicts if v.consistent is not None]
    if consistency:
        values["position_consistency"] = mean_value(consistency, True)
    width = 0.5 / bins
    for k in range(bins):
        low = 0.5 + k * width
        inside = [v for v in decided if low <= v.confidence < low + width or (k == bins - 1 and v.confidence == 1.0)]
        if inside:
            values[f"calibration/{low:.2f}-{low + width:.2f}"] = mean_value([float(v.preferred == 0) for v in inside],
                                                                            True)
    return values
