"""Win rate against a baseline model's answers, judged in both orders.

A judge J(x, a, b) says whether answer a (shown first) is better than b: 1, 0, or 1/2 for a tie. Judges are often
position-biased (an LLM judge tends to pick whichever answer it reads first; Zheng et al. 2023, "Judging
LLM-as-a-Judge", https://arxiv.org/abs/2306.05685, sec. 3.3), so each prompt is judged twice, the model's answer
first and then second:

    s_1 = J(x, y_model, y_base)        s_2 = 1 - J(x, y_base, y_model)        win(x) = (s_1 + s_2) / 2

A judge that always picks the first position gives s_1 = 1, s_2 = 0, win = 1/2: the bias cancels instead of deciding.
``position_consistency`` is the share of judged prompts where both orders agree (low: the judge is guessing).
Identical answers are a tie without asking the judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posttrain.config import option
from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext, ModelHandle
from posttrain.eval.estimators import mean_and_standard_error
from posttrain.eval.metrics.likelihood import NO_BASE
from posttrain.eval.prompts import DEFAULT_PROMPTS, load_prompts
from posttrain.eval.result import MetricResult, Value, score_each
from posttrain.models.forward import causal_lm, hidden_states
from posttrain.models.specs import EMBEDDED_DEFAULT
from posttrain.rollout import chat_prompts

JUDGE_TEMPLATE = (
    "Two assistants answered the same request. Decide which answer is better: more helpful, more correct, and "
    "following the request's instructions.\n\n[Request]\n{prompt}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
    "Which answer is better? Reply with one letter, A or B."
)

Judge = Callable[[list[str], list[str], list[str]], list[float]]  # (prompts, firsts, seconds) -> J in {0, 1/2, 1}


def verdict(first_score: float, second_score: float) -> float:
    return 1.0 if first_score > second_score else 0.0 if first_score < second_score else 0.5


def judge_both_orders(judge: Judge, prompts: list[str], answers: list[str], baseline_answers: list[str],
                      failures: list[dict] | None = None) -> list[dict | None]:
    """Per prompt: ``first`` = s_1, ``second`` = s_2, ``win`` = (s_1 + s_2) / 2 and ``consistent`` (s_1 == s_2), as
    in the module docstring; the judge sees every differing pair once in each order (two batched calls). A prompt
    the judge fails on is recorded in ``failures`` and gives None."""
    failures = [] if failures is None else failures
    differ = [i for i in range(len(prompts)) if answers[i] != baseline_answers[i]]
    columns = [[prompts[i] for i in differ], [answers[i] for i in differ], [baseline_answers[i] for i in differ]]
    order_failures: list[dict] = []
    model_first = score_each(judge, columns, order_failures, "judge") if differ else []
    model_second = score_each(judge, [columns[0], columns[2], columns[1]], order_failures, "judge") if differ else []
    failures += [dict(f, index=differ[f["index"]]) for f in order_failures]
    records: list[dict | None] = [{"first": 0.5, "second": 0.5, "win": 0.5, "consistent": None} for _ in prompts]
    for i, s1, j in zip(differ, model_first, model_second):
        if s1 is None or j is None:
            records[i] = None
            continue
        s2 = 1.0 - j
        records[i] = {"first": s1, "second": s2, "win": (s1 + s2) / 2, "consistent": s1 == s2}
    return records


class RewardModelJudge:
    """J(x, a, b) = [r(x, a) > r(x, b)] (1/2 on a tie) under a trained reward model. Each (prompt, answer) is scored
    once, so the second order costs nothing, and the verdict cannot depend on the order."""

    def __init__(self, scorer):
        self.scorer, self.scores = scorer, {}

    def __call__(self, prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
        wanted = list(dict.fromkeys((p, a) for p, a in [*zip(prompts, firsts), *zip(prompts, seconds)]
                                    if (p, a) not in self.scores))
        if wanted:
            values = self.scorer([p for p, _ in wanted], [a for _, a in wanted])
            self.scores.update(zip(wanted, values))
        return [verdict(self.scores[p, a], self.scores[p, b]) for p, a, b in zip(prompts, firsts, seconds)]


class LLMJudge:
    """A causal LM asked the ``template`` question (chat template applied): J = 1 when log p("A") > log p("B") for
    its next token, 0 when lower, 1/2 on a tie. One forward pass per question; only the last position's logits are
    computed."""

    def __init__(self, handle: ModelHandle, template: str = JUDGE_TEMPLATE, batch_size: int = 4):
        self.handle, self.template, self.batch_size = handle, template, batch_size
        tokenizer = handle.tokenizer
        letters = [tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in ("A", "B")]
        if any(len(ids) != 1 for ids in letters):
            raise ConfigError(f"LLM judge {handle.label!r}: 'A' and 'B' must be single tokens for its tokenizer")
        self.letter_ids = [ids[0] for ids in letters]

    @torch.no_grad()
    def __call__(self, prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
        questions = [self.template.format(prompt=p, first=a, second=b) for p, a, b in zip(prompts, firsts, seconds)]
        ids = chat_prompts(self.handle.tokenizer, questions)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [0.5] * len(ids)
        model = self.handle.model
        device = next(model.parameters()).device
        head = causal_lm(model).get_output_embeddings()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), self.handle.tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                attention_mask[row, : len(ids[i])] = 1
            batch = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
            with self.handle.active():
                hidden = hidden_states(model, batch)  # (B, T, H)
                last = hidden[torch.arange(len(chunk), device=device), batch["attention_mask"].sum(-1) - 1]  # (B, H)
                letters = head(last)[:, self.letter_ids].float()  # (B, 2): logits of "A" and "B"
            for row, i in enumerate(chunk):
                out[i] = verdict(float(letters[row, 0]), float(letters[row, 1]))
        return out


@dataclass
class WinRateOptions:
    baseline: str = option("auto", help="the model answers are compared with: a model spec, or auto: the model the "
                                        "evaluated one was fine-tuned from")
    judge: dict[str, Any] = option(
        default_factory=lambda: {"llm": EMBEDDED_DEFAULT}, help="{llm: SPEC, template: optional} or {reward_model: "
                                                                "PATH}; a fixed judge keeps runs comparable")
    prompts: str = option(DEFAULT_PROMPTS, help="the prompt set answered (a .jsonl/.txt file)")
    limit: int | None = option(None, min=1, help="the first N prompts; None: all")
    max_new_tokens: int = option(96, min=1, help="longest greedy answer, in tokens")
    batch_size: int = option(4, min=1, help="judge questions per forward pass")

    def __post_init__(self) -> None:
        kinds = [k for k in ("llm", "reward_model") if k in self.judge]
        unknown = sorted(set(self.judge) - {"llm", "reward_model", "template"})
        if len(kinds) != 1 or unknown:
            raise ConfigError(f"judge {self.judge!r}: give exactly one of 'llm' (a causal LM spec, with an optional "
                              "'template') or 'reward_model' (a reward model folder)")
        if "reward_model" in self.judge and not Path(self.judge["reward_model"]).is_dir():
            raise ConfigError(f"judge reward_model {self.judge['reward_model']!r}: no such folder")
        template = self.judge.get("template", JUDGE_TEMPLATE)
        if not all(f"{{{key}}}" in template for key in ("prompt", "first", "second")):
            raise ConfigError("judge template: must contain {prompt}, {first} and {second}")


def win_rate(context: EvalContext, options: WinRateOptions) -> MetricResult:
    """The mean of win(x) over the prompt set (module docstring): greedy answers of the evaluated model against the
    baseline's, judged in both orders by a reward model or an LLM judge. 1/2 is a draw with the baseline."""
    baseline = context.base_model(options.baseline)
    if baseline is None:
        return MetricResult(skipped=NO_BASE.replace("reference", "baseline"))
    if "reward_model" in options.judge:
        judge, judge_label = RewardModelJudge(context.reward_model(options.judge["reward_model"])), "reward_model"
    else:
        judge = LLMJudge(context.causal_lm(options.judge["llm"]), options.judge.get("template", JUDGE_TEMPLATE),
                         options.batch_size)
        judge_label = "llm"
    prompts = [p.prompt for p in load_prompts(options.prompts, options.limit)]
    answers = context.generate(context.policy, prompts, options.max_new_tokens).texts
    baseline_answers = context.generate(baseline, prompts, options.max_new_tokens).texts
    failures: list[dict] = []
    records = judge_both_orders(judge, prompts, answers, baseline_answers, failures)
    scored = [r for r in records if r is not None]
    win, stderr = mean_and_standard_error([r["win"] for r in scored])
    values = {"": Value(win, len(scored), stderr, higher_is_better=True)}
    judged = [float(r["consistent"]) for r in scored if r["consistent"] is not None]
    if judged:
        consistency, consistency_stderr = mean_and_standard_error(judged)
        values["position_consistency"] = Value(consistency, len(judged), consistency_stderr)
    samples = [{"prompt": p, "output": a, "baseline_output": b, **(r or {"win": None})}
               for p, a, b, r in zip(prompts, answers, baseline_answers, records)]
    details = {"baseline": baseline.label, "judge": judge_label, **options.judge}
    return MetricResult(values, samples, failures, details)
