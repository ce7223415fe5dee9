"""AI-labelled preference pairs (RLAIF, Lee et al. 2023, https://arxiv.org/abs/2309.00267): for each prompt, sample k
completions from a policy, let a judge (``posttrain.rollout.judges``) compare every two distinct ones, and write
prompt / chosen / rejected rows that every preference method (DPO, IPO, KTO, ORPO, SimPO) reads unchanged.

    posttrain label configs/label.yaml       (or a pipeline stage `label: FILE`; {stage} is the file it wrote)

``pairs: all`` writes every judged pair with a preference; ``best_worst`` one pair per prompt, the completion that beats
the others most against the one that beats them least (mean P(beats j) over its k - 1 opponents: a Borda count of
the judge's probabilities), labelled by the judge's own verdict on that pair. A pair the judge abstains on, or whose
confidence max(p, 1 - p) is below ``min_confidence``, goes to ``dropped.jsonl`` instead, with its probability.

``pairs: best`` is rejection sampling (expert iteration, RFT): the top-ranked completion of each prompt as an SFT row
(prompt, completion, score = its Borda score) in ``best.jsonl``, kept only when its reward (``rewards``; the task's
checker by default) reaches ``min_reward``, when set. Label -> SFT -> label with the new model ... are its rounds.

Output folder: ``pairs.jsonl`` (prompt, chosen, rejected, probability = the judge's P(chosen better), consistent,
and when the judge gives them ``principle`` and ``reasoning`` = [chosen shown first, rejected shown first]) or
``best.jsonl``, ``dropped.jsonl``, ``config.json`` and, last, ``evaluation.json`` (counts, mean confidence, and, when
the prompts come from a task, how often the chosen completion is the checker's correct one: the labels' agreement
with ground truth, which the labelling itself never reads). Every file is written atomically.

The RL stage of Constitutional AI (RL-CAI) is this with a constitution judge (``judge: {constitution: FILE}``): each
pair is judged on a drawn principle's question, and ``evaluation.json`` adds ``principle_agreement`` (the drawn
principle's checker, where it separates the two responses, accepts the chosen one).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from posttrain.config import config_to_dict, option
from posttrain.data.sources import load_rows
from posttrain.errors import ConfigError
from posttrain.io import atomic_write_text
from posttrain.models import load_model
from posttrain.models.specs import EMBEDDED_DEFAULT
from posttrain.rollout.constitution import load_constitution, principle_agreement
from posttrain.rollout.judge_specs import build_judge, judge_kind, load_causal_lm
from posttrain.rollout.judges import Verdict, borda_scores
from posttrain.rollout.prompts import chat_prompts
from posttrain.rollout.rewards import build_reward
from posttrain.rollout.sampling import SamplingParams, sample
from posttrain.tasks import Problem, get_task

log = logging.getLogger(__name__)


@dataclass
class LabelConfig:
    method: Literal["label"] = option("label", help="label: sample completions and write AI-judged preference pairs "
                                                    "(trains nothing)")
    model: str = option(EMBEDDED_DEFAULT, help="the policy that samples the completions: a built-in name, a model "
                                               "folder (e.g. runs/dpo/final) or a hub id")
    output_dir: str = option("runs/label", help="folder of pairs.jsonl, dropped.jsonl, config.json, evaluation.json")
    overwrite_output_dir: bool = option(False, help="replace the pairs of an earlier run in output_dir")
    seed: int = option(0, help="seeds the prompts drawn from the task and the sampling")
    dtype: str = option("auto", help="the policy's weight dtype (auto, float32, bfloat16, float16)")
    device: str = option("auto", help="torch device; auto: cuda when available, else cpu")
    task: str | None = option("arithmetic", help="where prompts come from unless prompts is set (posttrain.tasks); "
                                                 "its checker only measures the labels, never makes them")
    task_options: dict[str, Any] = option(default_factory=dict, help="keyword options of the task's generator")
    split: Literal["train", "eval"] = option("train", help="the task split the prompts are drawn from")
    num_prompts: int = option(200, min=1, help="prompts drawn from the task (or the first N rows of prompts)")
    prompts: str | None = option(None, help="a .jsonl/.json/.csv file (or dataset) with a prompt column; None: the task")
    samples: int = option(4, min=2, help="k: completions sampled per prompt")
    pairs: Literal["all", "best_worst", "best"] = option(
        "best_worst", help="all: every judged pair with a preference; best_worst: one pair per prompt; best: the "
                           "top-ranked completion per prompt as an SFT row (rejection sampling; module docstring)")
    judge: dict[str, Any] = option(default_factory=lambda: {"pairwise": EMBEDDED_DEFAULT},
                                   help="the judge (posttrain.rollout.judge_specs): {pairwise: SPEC} | {pointwise: "
                                        "SPEC} | {reference_guided: SPEC} | {reward_model: PATH} | {rule: ...} | "
                                        "{constitution: FILE, model: SPEC} (RL-CAI) | {ensemble: [...]}")
    min_confidence: float = option(0.5, min=0.5, max=1.0, help="keep a pair only when the judge's max(p, 1 - p) "
                                                                "reaches this; 0.5: every pair with a preference")
    rewards: list[dict[str, Any]] = option(default_factory=list, help="pairs: best: reward functions ({name: TASK} | "
                                                                      "{function: 'module:fn'} | {model: FOLDER}) the "
                                                                      "kept completion must reach min_reward on; "
                                                                      "empty: the task's checker")
    min_reward: float | None = option(None, help="pairs: best: keep a prompt's best completion only when its reward "
                                                 "reaches this (e.g. 1.0: correct); None: keep every best")
    max_new_tokens: int = option(64, min=1, help="longest sampled completion, in tokens")
    temperature: float = option(1.0, min=0.01, help="sampling temperature of the completions")
    top_p: float = option(1.0, min=0, max=1, help="nucleus sampling; 1: off")
    batch_size: int = option(64, min=1, help="completions sampled together")

    def __post_init__(self) -> None:
        judge_kind(self.judge, "label judge")
        if (self.rewards or self.min_reward is not None) and self.pairs != "best":
            raise ConfigError(f"label: rewards and min_reward filter rejection sampling's rows: they need pairs: best "
                              f"(got pairs: {self.pairs})")


def load_prompts_for_labelling(config: LabelConfig) -> list[Problem]:
    if config.prompts:
        rows = load_rows(config.prompts)[: config.num_prompts]
        for row in rows:
            if not isinstance(row.values.get("prompt"), str):
                raise ConfigError(f"{row.where}: labelling needs a text 'prompt' column")
        return [Problem(r.values["prompt"], str(r.values.get("answer", "")), dict(r.values)) for r in rows]
    if not config.task:
        raise ConfigError("label: set prompts (a file with a prompt column) or task")
    return get_task(config.task, **config.task_options).problems(config.split, config.num_prompts, config.seed)


def pair_rows(prompt: str, completions: list[str], verdicts: dict[tuple[int, int], Verdict], mode: str,
              min_confidence: float) -> tuple[list[dict], list[dict]]:
    """``(kept, dropped)`` rows of one prompt from the verdicts on its distinct completions' pairs (i < j, i shown
    first to the judge)."""
    if mode == "best_worst":
        scores = borda_scores(verdicts, len(completions))
        ranked = sorted(range(len(completions)), key=scores.__getitem__)
        worst, best = ranked[0], ranked[-1]
        verdicts = {key: v for key, v in verdicts.items() if set(key) == {worst, best}}
    kept, dropped = [], []
    for (i, j), v in verdicts.items():
        if v.preferred is None or v.confidence < min_confidence:
            dropped.append({"prompt": prompt, "first": completions[i], "second": completions[j],
                            "probability": v.probability, "abstained": v.preferred is None, **details(v)})
            continue
        chosen, rejected = (i, j) if v.preferred == 0 else (j, i)
        kept.append({"prompt": prompt, "chosen": completions[chosen], "rejected": completions[rejected],
                     "probability": v.confidence, "consistent": v.consistent, **details(v, swap=chosen == j)})
    return kept, dropped


def details(verdict: Verdict, swap: bool = False) -> dict:
    """What a judge said besides p, for inspection: the principle asked and the reasoning in each order (the first
    of the row shown first, then the other; ``swap``: the row's first response was shown second)."""
    out = {"principle": verdict.principle} if verdict.principle else {}
    if verdict.reasoning:
        out["reasoning"] = list(reversed(verdict.reasoning) if swap else verdict.reasoning)
    return out


def label_preferences(config: LabelConfig, callbacks=None) -> dict:
    """Sample, judge, write (module docstring); returns the evaluation dict, also written to evaluation.json."""
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    name = "best.jsonl" if config.pairs == "best" else "pairs.jsonl"
    if (output_dir / name).exists() and not config.overwrite_output_dir:
        raise ConfigError(f"{output_dir} already holds {name}: set overwrite_output_dir: true to replace it, or "
                          "another output_dir")
    problems = load_prompts_for_labelling(config)
    policy, tokenizer = load_model(config.model, config.dtype, config.device)
    policy.eval().requires_grad_(False)
    params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p, seed=config.seed)
    rollout = sample(policy, tokenizer, chat_prompts(tokenizer, [p.prompt for p in problems]), params,
                     group_size=config.samples, batch_size=config.batch_size)
    # a judge naming the policy's own spec judges with the loaded policy (self-rewarding), not a second copy
    judge = build_judge(config.judge, lambda spec: (policy, tokenizer) if spec == config.model else load_causal_lm(spec))

    k = config.samples
    distinct = [list(dict.fromkeys(rollout.texts[i * k : (i + 1) * k])) for i in range(len(problems))]
    questions = [(n, i, j) for n, texts in enumerate(distinct) for i, j in combinations(range(len(texts)), 2)]
    verdicts = judge([problems[n].prompt for n, _, _ in questions], [distinct[n][i] for n, i, _ in questions],
                     [distinct[n][j] for n, _, j in questions], [problems[n] for n, _, _ in questions]) \
        if questions else []
    by_prompt: dict[int, dict] = {n: {} for n in range(len(problems))}
    for (n, i, j), verdict in zip(questions, verdicts):
        by_prompt[n][i, j] = verdict
    kept, dropped = [], []
    if config.pairs == "best":
        kept, dropped = best_rows(config, problems, distinct, by_prompt)
        figures = {"n_kept": len(kept), "n_dropped": len(dropped), **checker_accuracy(config, problems, rollout, kept)}
    else:
        for n, problem in enumerate(problems):
            rows = pair_rows(problem.prompt, distinct[n], by_prompt[n], config.pairs, config.min_confidence)
            kept += rows[0]
            dropped += rows[1]
        figures = {"n_pairs": len(kept), "n_dropped": len(dropped), "n_abstained": sum(r["abstained"] for r in dropped),
                   "mean_confidence": sum(r["probability"] for r in kept) / len(kept) if kept else None,
                   **checker_agreement(config, problems, kept)}
        if judge_kind(config.judge) == "constitution":  # RL-CAI: the drawn principles' checkers measure the labels
            figures.update(principle_agreement(load_constitution(config.judge["constitution"]), kept))

    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.json", json.dumps(config_to_dict(config), indent=2) + "\n")
    atomic_write_text(output_dir / name, "".join(json.dumps(r) + "\n" for r in kept))
    atomic_write_text(output_dir / "dropped.jsonl", "".join(json.dumps(r) + "\n" for r in dropped))
    evaluation = {"method": "label", "data": str(output_dir / name), "final_model": config.model,
                  "n_prompts": len(problems), "n_completions": len(rollout.texts), "n_judged": len(questions),
                  "prompts_with_one_completion": sum(len(t) < 2 for t in distinct), **figures,
                  "time_s": time.perf_counter() - started}
    atomic_write_text(output_dir / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    log.warning("label: %d rows (%d dropped) from %d prompts in %s", len(kept), len(dropped), len(problems),
                output_dir / name)
    return evaluation


def checker_agreement(config: LabelConfig, problems: list[Problem], kept: list[dict]) -> dict:
    """With task prompts: among kept pairs where exactly one completion is correct, the share whose chosen one is."""
    if config.prompts or not config.task:
        return {}
    task = get_task(config.task, **config.task_options)
    by_prompt = {p.prompt: p for p in problems}
    decisive = [(task.is_correct(by_prompt[r["prompt"]], r["chosen"]), task.is_correct(by_prompt[r["prompt"]],
                                                                                          r["rejected"]))
                for r in kept]
    decisive = [chosen for chosen, rejected in decisive if chosen != rejected]
    return {"checker_decisive_pairs": len(decisive),
            "checker_agreement": sum(decisive) / len(decisive) if decisive else None}


def best_rows(config: LabelConfig, problems: list[Problem], distinct: list[list[str]],
              by_prompt: dict[int, dict]) -> tuple[list[dict], list[dict]]:
    """Rejection sampling: per prompt, the completion with the highest Borda score (the earliest on a tie), kept
    when its reward reaches ``min_reward`` (no threshold: always)."""
    best = []
    for n, problem in enumerate(problems):
        scores = borda_scores(by_prompt[n], len(distinct[n]))
        top = max(range(len(scores)), key=lambda i: (scores[i], -i))
        best.append({"prompt": problem.prompt, "completion": distinct[n][top], "score": scores[top]})
    if config.min_reward is None:
        return best, []
    task = get_task(config.task, **config.task_options) if config.task and not config.prompts else None
    rewards, _ = build_reward(config.rewards, task)([r["prompt"] for r in best], [r["completion"] for r in best],
                                                    problems)
    kept, dropped = [], []
    for row, reward in zip(best, rewards):
        (kept if reward >= config.min_reward else dropped).append(dict(row, reward=reward))
    return kept, dropped


def checker_accuracy(config: LabelConfig, problems: list[Problem], rollout, kept: list[dict]) -> dict:
    """With task prompts: the share of all sampled completions that are correct, and of the kept ones (what the
    selection adds)."""
    if config.prompts or not config.task:
        return {}
    task = get_task(config.task, **config.task_options)
    k, by_prompt = config.samples, {p.prompt: p for p in problems}
    sampled = [task.is_correct(problems[i // k], text) for i, text in enumerate(rollout.texts)]
    chosen = [task.is_correct(by_prompt[r["prompt"]], r["completion"]) for r in kept]
    return {"checker_accuracy_sampled": sum(sampled) / len(sampled),
            "checker_accuracy_kept": sum(chosen) / len(chosen) if chosen else None}
