"""Best-of-n sampling: n completions per prompt, the one a judge ranks first is the answer.

    posttrain generate --prompt "What is 47 - 18?" --best-of 8 --judge "{rule: arithmetic}"

Every two distinct candidates of a prompt are judged (``posttrain.rollout.judges``, any kind) and each candidate's
score is its mean probability of beating the others (``borda_scores``); for a reward model or a rule, whose
probabilities are monotone in their scores, that is the argmax of the score. Ties go to the earlier sample.
"""

from __future__ import annotations

from itertools import combinations

from posttrain.rollout.judges import borda_scores
from posttrain.rollout.prompts import chat_prompt_ids
from posttrain.rollout.sampling import SamplingParams, sample
from posttrain.tasks.base import Problem


def rank_candidates(judge, prompts: list[str], candidates: list[list[str]],
                    problems: list[Problem] | None = None) -> list[list[float]]:
    """Per prompt, each candidate's Borda score; all prompts' pairs go to the judge in one call. Identical
    candidates share the score of their first occurrence."""
    distinct = [list(dict.fromkeys(texts)) for texts in candidates]
    questions = [(n, i, j) for n, texts in enumerate(distinct) for i, j in combinations(range(len(texts)), 2)]
    verdicts = judge([prompts[n] for n, _, _ in questions], [distinct[n][i] for n, i, _ in questions],
                     [distinct[n][j] for n, _, j in questions],
                     [problems[n] for n, _, _ in questions] if problems else None) if questions else []
    per_prompt: list[dict] = [{} for _ in prompts]
    for (n, i, j), verdict in zip(questions, verdicts):
        per_prompt[n][i, j] = verdict
    scores = []
    for texts, unique, verdicts_n in zip(candidates, distinct, per_prompt):
        by_text = dict(zip(unique, borda_scores(verdicts_n, len(unique))))
        scores.append([by_text[text] for text in texts])
    return scores


def best_of_n(model, tokenizer, prompts: list[str], n: int, judge, max_new_tokens: int = 128,
              temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, system: str | None = None,
              problems: list[Problem] | None = None) -> list[dict]:
    """Per prompt: ``{"prompt", "best", "candidates", "scores"}``, ``best`` the highest-scored of ``n`` samples."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    rollout = sample(model, tokenizer, [chat_prompt_ids(tokenizer, p, system) for p in prompts], params, group_size=n)
    candidates = [rollout.texts[k * n : (k + 1) * n] for k in range(len(prompts))]
    best, scores = pick_best(judge, prompts, candidates, problems)
    return [{"prompt": prompt, "best": chosen, "candidates": texts, "scores": s}
            for prompt, chosen, texts, s in zip(prompts, best, candidates, scores)]


def pick_best(judge, prompts: list[str], candidates: list[list[str]],
              problems: list[Problem] | None = None) -> tuple[list[str], list[list[float]]]:
    """Per prompt, the candidate with the highest Borda score (a tie goes to the earlier sample), and the scores."""
    scores = rank_candidates(judge, prompts, candidates, problems)
    best = [texts[max(range(len(s)), key=lambda i: (s[i], -i))] for texts, s in zip(candidates, scores)]
    return best, scores


def generate_best_of(model_spec: str, prompt: str, n: int, judge: str | dict | None, max_new_tokens: int = 256,
                     temperature: float = 1.0, system: str | None = None, device: str = "auto") -> dict:
    """``posttrain generate --best-of N --judge SPEC``: the model and judge loaded from their specs (``judge`` a
    mapping or its YAML/JSON text, e.g. ``"{rule: arithmetic}"``); a judge naming the model reuses it."""
    import yaml

    from posttrain.errors import ConfigError
    from posttrain.models import load_model
    from posttrain.rollout.judge_specs import build_judge, load_causal_lm

    if judge is None:
        raise ConfigError("--best-of needs --judge, e.g. --judge '{rule: arithmetic}' or '{reward_model: PATH}' "
                          "(posttrain.rollout.judge_specs)")
    if isinstance(judge, str):
        try:
            judge = yaml.safe_load(judge)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--judge {judge!r}: not a YAML/JSON mapping ({exc.__class__.__name__})") from None
    model, tokenizer = load_model(model_spec, device=device)
    model.eval()
    scorer = build_judge(judge, lambda spec: (model, tokenizer) if spec == model_spec else load_causal_lm(spec),
                         "--judge")
    return best_of_n(model, tokenizer, [prompt], n, scorer, max_new_tokens, temperature, system=system)[0]
