"""Judges: which of two responses to a prompt is better, with a probability, from a language model, a reward model
or a program. Used by evaluation (win rate, judge quality), preference labelling (RLAIF) and online DPO.

Every judge is called as ``judge(prompts, firsts, seconds, problems=None) -> list[Verdict]``; a ``Verdict`` holds
p = P(first is better than second) and whether the judge abstained. The judges (Zheng et al. 2023, "Judging
LLM-as-a-Judge", https://arxiv.org/abs/2306.05685):

- ``PairwiseJudge``: a causal LM reads ``template`` (with {prompt} {first} {second}) and the verdict is read from the
  log-probabilities of the two label tokens, not from sampled text. Each pair is asked in both orders. With the label
  log-odds m = log p("A") - log p("B"), a constant position bias d adds to both orders' log-odds:

      m_1 = s + d   (a shown first)        m_2 = -s + d   (b shown first)        s = (m_1 - m_2) / 2,   p = sigma(s)

  so averaging the *log-odds* removes d exactly (averaging the two probabilities would not: sigma is not linear).
  ``consistent``: both orders prefer the same response. With ``cot``, the judge first reasons (greedy, through the
  rollout engine, separately in each order), and m is read after the question, its reasoning and ``cot_suffix``
  (Lee et al. 2023, RLAIF, sec. 2.1.2: generate a rationale, then score the labels after an ending string).
- ``PointwiseJudge``: each response alone, "is it <criterion>?": a distribution over ordered labels ("no" < "yes",
  or "1" < ... < "10"), each label's probability renormalised over the labels (G-Eval, Liu et al. 2023,
  https://arxiv.org/abs/2303.16634: score = sum_s s * p(s)). Two responses are compared as two independent draws
  from their distributions: p = P(S_a > S_b) + P(S_a = S_b) / 2, which for yes/no is 1/2 + (P_a(yes) - P_b(yes)) / 2.
  No position to be biased by.
- ``ReferenceGuidedJudge`` (Zheng et al. 2023, sec. 3.4): the judge answers the prompt itself, k samples and a
  majority vote over the parsed answers (self-consistency, Wang et al. 2022), and prefers the response whose answer
  agrees with its own, with p = 1/2 + share/2 (share: the majority answer's share of the k samples); it abstains when
  neither or both agree, or when no answer wins the vote.
- ``RewardModelJudge``: p = sigma(r(x, a) - r(x, b)), the Bradley-Terry probability the reward model was trained on.
- ``RuleJudge``: a reward function (a task's checker, or ``module:function``): p = 1 or 0 by the higher score; it
  abstains on equal scores.
- ``EnsembleJudge``: the weighted mean of its members' p over the members that did not abstain.

Any judge abstains too when |p - 1/2| < ``abstain_band``. ``build_judge(spec)`` makes one from a config mapping
(``JUDGE_KINDS``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch

from posttrain.data.batching import collate_sequences
from posttrain.errors import ConfigError
from posttrain.models.forward import causal_lm, hidden_states, token_logps
from posttrain.rollout.prompts import chat_prompts
from posttrain.rollout.sampling import SamplingParams, eos_ids, sample
from posttrain.tasks.base import Problem

PAIRWISE_TEMPLATE = (
    "Two assistants answered the same request. Decide which answer is better: more helpful, more correct, and "
    "following the request's instructions.\n\n[Request]\n{prompt}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
    "Which answer is better? Reply with one letter, A or B."
)
# chain-of-thought: the judge reasons after this question, then reads its verdict after COT_SUFFIX ("[[A]]", as in
# MT-Bench's judge prompts)
COT_TEMPLATE = PAIRWISE_TEMPLATE.replace("Which answer is better? Reply with one letter, A or B.",
                                         "Compare the two answers step by step, then give your verdict as [[A]] or "
                                         "[[B]].")
COT_SUFFIX = "\n\nVerdict: [["
YES_NO_TEMPLATE = ("[Request]\n{prompt}\n\n[Response]\n{response}\n\nIs this response {criterion}? Reply with one "
                   "word, yes or no.")
SCORE_TEMPLATE = ("[Request]\n{prompt}\n\n[Response]\n{response}\n\nHow {criterion} is this response, from 1 (not at "
                  "all) to 10 (completely)? Reply with the number only.")


@dataclass(frozen=True)
class Verdict:
    """``probability``: P(first better than second); ``abstained``: the judge gives no preference (its probability
    is then not a label); ``consistent``: both presentation orders preferred the same response (pairwise LM judges
    only, else None); ``orders``: P(first better) read in each order, (first shown first, second shown first);
    ``reasoning``: a chain-of-thought judge's reasoning in each order (same order); ``principle``: the constitution
    principle whose question was asked (``ConstitutionalJudge``)."""

    probability: float
    abstained: bool = False
    consistent: bool | None = None
    orders: tuple[float, float] | None = None
    reasoning: tuple[str, str] | None = None
    principle: str | None = None

    @property
    def preferred(self) -> int | None:
        """0: the first response, 1: the second, None: no preference (abstained or p = 1/2)."""
        if self.abstained or self.probability == 0.5:
            return None
        return 0 if self.probability > 0.5 else 1

    @property
    def confidence(self) -> float:
        return max(self.probability, 1.0 - self.probability)

    def to_dict(self) -> dict:
        extra = {"reasoning": list(self.reasoning)} if self.reasoning else {}
        return {"probability": self.probability, "abstained": self.abstained, "consistent": self.consistent,
                "orders": list(self.orders) if self.orders else None, **extra,
                **({"principle": self.principle} if self.principle else {})}


def within_band(probability: float, band: float) -> bool:
    return abs(probability - 0.5) < band


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# ------------------------------------------------------------------------------------------ label log-probs
@torch.no_grad()
def label_logps(model, tokenizer, prompt_ids: list[list[int]], labels: list[str], batch_size: int = 8) -> torch.Tensor:
    """``(N, L)``: log p(label | prompt) of each label's tokens after each prompt (the reply's first tokens).

    Single-token labels need one forward per prompt (the last position's logits). Longer labels are scored as whole
    replies; when one label's tokens begin another's ("1" and "10"), each is followed by the end-of-turn token, so
    that "1" means the reply "1" and not also every reply starting with it."""
    label_ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    if any(not ids for ids in label_ids):
        raise ConfigError(f"judge labels {labels!r}: each must be at least one token")
    was_training = model.training
    model.eval()
    try:
        if all(len(ids) == 1 for ids in label_ids):
            return _next_token_logps(model, tokenizer, prompt_ids, [ids[0] for ids in label_ids], batch_size)
        if any(a != b and b[: len(a)] == a for a in label_ids for b in label_ids):
            label_ids = [ids + [tokenizer.eos_token_id] for ids in label_ids]
        return _sequence_logps(model, tokenizer, prompt_ids, label_ids, batch_size)
    finally:
        model.train(was_training)


def _batches(prompt_ids: list[list[int]], batch_size: int):
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _next_token_logps(model, tokenizer, prompt_ids, ids: list[int], batch_size: int) -> torch.Tensor:
    out = torch.zeros(len(prompt_ids), len(ids))
    device = next(model.parameters()).device
    head = causal_lm(model).get_output_embeddings()
    for chunk in _batches(prompt_ids, batch_size):
        batch = collate_sequences([(prompt_ids[i], []) for i in chunk], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = hidden_states(model, batch)  # (B, T, H)
        last = hidden[torch.arange(len(chunk), device=device), batch["attention_mask"].sum(-1) - 1]  # (B, H)
        logps = head(last).float().log_softmax(-1)  # (B, V): only the last position is projected
        out[chunk] = logps[:, ids].cpu()
    return out


def _sequence_logps(model, tokenizer, prompt_ids, label_ids: list[list[int]], batch_size: int) -> torch.Tensor:
    rows = [(i, k) for i in range(len(prompt_ids)) for k in range(len(label_ids))]
    out = torch.zeros(len(prompt_ids), len(label_ids))
    device = next(model.parameters()).device
    for chunk in _batches([prompt_ids[i] + label_ids[k] for i, k in rows], batch_size):
        batch = collate_sequences([(prompt_ids[rows[r][0]], label_ids[rows[r][1]]) for r in chunk],
                                  tokenizer.pad_token_id)
        stats, mask = token_logps(model, {k: v.to(device) for k, v in batch.items()})
        sums = (stats.logps.float() * mask).sum(-1).cpu()  # (B,)
        for r, value in zip(chunk, sums.tolist()):
            out[rows[r]] = value
    return out


# ------------------------------------------------------------------------------------------------ LM judges
class PairwiseJudge:
    """A causal LM comparing two responses, both orders, verdict from its two label tokens (module docstring).
    ``cot``: reason first (at most ``cot_max_new_tokens``, greedy), then read the labels after ``cot_suffix``;
    ``template`` defaults to ``COT_TEMPLATE`` then, else ``PAIRWISE_TEMPLATE``."""

    def __init__(self, model, tokenizer, template: str | None = None, labels: tuple[str, str] = ("A", "B"),
                 abstain_band: float = 0.0, batch_size: int = 8, cot: bool = False, cot_max_new_tokens: int = 128,
                 cot_suffix: str = COT_SUFFIX):
        if not isinstance(cot, bool):
            raise ConfigError(f"pairwise judge cot: expected true or false, got {cot!r}")
        if isinstance(cot_max_new_tokens, bool) or not isinstance(cot_max_new_tokens, int) or cot_max_new_tokens < 1:
            raise ConfigError(f"pairwise judge cot_max_new_tokens: expected a whole number >= 1, got "
                              f"{cot_max_new_tokens!r}")
        template = template or (COT_TEMPLATE if cot else PAIRWISE_TEMPLATE)
        missing = [key for key in ("prompt", "first", "second") if f"{{{key}}}" not in template]
        if missing:
            raise ConfigError(f"pairwise judge template: must contain {{prompt}}, {{first}} and {{second}} "
                              f"(missing {', '.join('{' + m + '}' for m in missing)})")
        if any(len(tokenizer(label, add_special_tokens=False)["input_ids"]) != 1 for label in labels):
            raise ConfigError(f"pairwise judge labels {labels!r}: each must be a single token of the judge's tokenizer")
        self.model, self.tokenizer, self.template, self.labels = model, tokenizer, template, list(labels)
        self.abstain_band, self.batch_size = abstain_band, batch_size
        self.cot, self.cot_max_new_tokens, self.cot_suffix = cot, cot_max_new_tokens, cot_suffix

    def log_odds(self, prompts: list[str], firsts: list[str], seconds: list[str]) -> torch.Tensor:
        """``(N,)``: m = log p(label 1) - log p(label 2) with the responses shown in the given order."""
        return self.margins(prompts, firsts, seconds)[0]

    def margins(self, prompts, firsts, seconds) -> tuple[torch.Tensor, list[str] | None]:
        """The log-odds (``log_odds``) and, with ``cot``, the reasoning each was read after (else None)."""
        questions = [self.template.format(prompt=p, first=a, second=b) for p, a, b in zip(prompts, firsts, seconds)]
        contexts, reasoning = chat_prompts(self.tokenizer, questions), None
        if self.cot:
            contexts, reasoning = self.reason(contexts)
        logps = label_logps(self.model, self.tokenizer, contexts, self.labels, self.batch_size)
        return logps[:, 0] - logps[:, 1], reasoning

    def reason(self, prompt_ids: list[list[int]]) -> tuple[list[list[int]], list[str]]:
        """The judge's greedy reasoning after each question, ``batch_size`` questions decoded together: (question +
        reasoning + ``cot_suffix`` token ids, where the verdict is read; the reasoning texts). The end-of-turn token
        that closed the reasoning is left out, so the verdict continues the same reply."""
        params = SamplingParams(max_new_tokens=self.cot_max_new_tokens, temperature=0.0)
        was_training = self.model.training
        self.model.eval()
        try:
            rollout = sample(self.model, self.tokenizer, prompt_ids, params, batch_size=self.batch_size)
        finally:
            self.model.train(was_training)
        stop = set(eos_ids(self.model, self.tokenizer, params))
        suffix = self.tokenizer(self.cot_suffix, add_special_tokens=False)["input_ids"]
        contexts = []
        for prompt, row, length in zip(prompt_ids, rollout.completion_ids.tolist(),
                                       rollout.completion_lengths.tolist()):
            tokens = row[:length]
            while tokens and tokens[-1] in stop:
                tokens.pop()
            contexts.append(prompt + tokens + suffix)
        return contexts, rollout.texts

    def __call__(self, prompts, firsts, seconds, problems=None) -> list[Verdict]:
        n = len(prompts)
        margins, reasoning = self.margins(list(prompts) * 2, list(firsts) + list(seconds),
                                          list(seconds) + list(firsts))
        verdicts = []
        for k, (m1, m2) in enumerate(zip(margins[:n].tolist(), margins[n:].tolist())):
            p = sigmoid((m1 - m2) / 2)
            verdicts.append(Verdict(p, within_band(p, self.abstain_band), (m1 > 0) == (-m2 > 0),
                                    (sigmoid(m1), sigmoid(-m2)),
                                    (reasoning[k], reasoning[n + k]) if reasoning else None))
        return verdicts


class PointwiseJudge:
    """A causal LM rating each response alone on ordered labels (module docstring). ``mode``: ``yes_no`` (P(yes)) or
    ``score`` (1..10, the probability-weighted mean)."""

    MODES = {"yes_no": (YES_NO_TEMPLATE, ("no", "yes")), "score": (SCORE_TEMPLATE, tuple(str(s) for s in range(1, 11)))}

    def __init__(self, model, tokenizer, criterion: str = "correct and helpful", mode: str = "yes_no",
                 template: str | None = None, abstain_band: float = 0.0, batch_size: int = 8):
        if mode not in self.MODES:
            raise ConfigError(f"pointwise judge mode {mode!r}: expected one of {', '.join(self.MODES)}")
        default_template, self.labels = self.MODES[mode]
        self.template = template or default_template
        if "{response}" not in self.template:
            raise ConfigError("pointwise judge template: must contain {response}")
        self.model, self.tokenizer, self.criterion, self.mode = model, tokenizer, criterion, mode
        self.abstain_band, self.batch_size = abstain_band, batch_size

    def distributions(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``(N, L)``: each response's probability of each label, renormalised over the labels (lowest first)."""
        questions = [self.template.format(prompt=p, response=r, criterion=self.criterion)
                     for p, r in zip(prompts, responses)]
        logps = label_logps(self.model, self.tokenizer, chat_prompts(self.tokenizer, questions), list(self.labels),
                            self.batch_size)
        return logps.double().softmax(-1)

    def scores(self, prompts: list[str], responses: list[str]) -> list[float]:
        """P(yes) (yes_no), or the expected score sum_s s p(s) (score)."""
        dist = self.distributions(prompts, responses)
        values = torch.arange(len(self.labels), dtype=dist.dtype) + (0 if self.mode == "yes_no" else 1)
        return (dist * values).sum(-1).tolist()

    def __call__(self, prompts, firsts, seconds, problems=None) -> list[Verdict]:
        n = len(prompts)
        dist = self.distributions(list(prompts) * 2, list(firsts) + list(seconds))
        verdicts = []
        for pa, pb in zip(dist[:n], dist[n:]):
            joint = pa[:, None] * pb[None, :]  # (L, L): P(S_a = i, S_b = j)
            p = float(joint.tril(-1).sum() + joint.diagonal().sum() / 2)  # P(S_a > S_b) + P(S_a = S_b) / 2
            verdicts.append(Verdict(p, within_band(p, self.abstain_band)))
        return verdicts


class ReferenceGuidedJudge:
    """The judge's own majority answer as the reference (module docstring). ``parser(text) -> answer or None``."""

    def __init__(self, model, tokenizer, parser: Callable[[str], Any], samples: int = 8, temperature: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0, abstain_band: float = 0.0):
        if samples < 1:
            raise ConfigError(f"reference-guided judge: samples must be >= 1, got {samples}")
        self.model, self.tokenizer, self.parser, self.samples = model, tokenizer, parser, samples
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        self.abstain_band = abstain_band
        self.references: dict[str, tuple[Any, float]] = {}  # prompt -> (majority answer or None, its vote share)

    def reference(self, prompts: list[str]) -> list[tuple[Any, float]]:
        """Per prompt: the majority answer of ``samples`` sampled answers and its share of the votes; (None, share)
        when no sample parses or two answers tie for the most votes. Each prompt is answered once."""
        new = list(dict.fromkeys(p for p in prompts if p not in self.references))
        if new:
            rollout = sample(self.model, self.tokenizer, chat_prompts(self.tokenizer, new), self.params,
                             group_size=self.samples)
            for i, prompt in enumerate(new):
                self.references[prompt] = majority(
                    [self.parser(text) for text in rollout.texts[i * self.samples : (i + 1) * self.samples]])
        return [self.references[p] for p in prompts]

    def __call__(self, prompts, firsts, seconds, problems=None) -> list[Verdict]:
        verdicts = []
        for (answer, share), a, b in zip(self.reference(list(prompts)), firsts, seconds):
            agree_a = answer is not None and self.parser(a) == answer
            agree_b = answer is not None and self.parser(b) == answer
            if agree_a == agree_b:
                verdicts.append(Verdict(0.5, True))
                continue
            p = 0.5 + share / 2 if agree_a else 0.5 - share / 2
            verdicts.append(Verdict(p, within_band(p, self.abstain_band)))
        return verdicts


def borda_scores(verdicts: dict[tuple[int, int], Verdict], n: int) -> list[float]:
    """Each of ``n`` candidates' mean probability of beating the others, from verdicts on pairs (i, j) (i shown
    first): a Borda count of the judge's probabilities. For a judge with p = sigma(r_i - r_j) or a rule, the highest
    Borda score is the highest r."""
    wins: list[list[float]] = [[] for _ in range(n)]
    for (i, j), verdict in verdicts.items():
        wins[i].append(verdict.probability)
        wins[j].append(1.0 - verdict.probability)
    return [sum(w) / len(w) if w else 0.5 for w in wins]


def majority(answers: list) -> tuple[Any, float]:
    """(the most common non-None answer, its count / len(answers)); (None, share) on a tie for first or no answer."""
    counts = Counter(a for a in answers if a is not None).most_common(2)
    if not counts:
        return None, 0.0
    share = counts[0][1] / len(answers)
    if len(counts) == 2 and counts[1][1] == counts[0][1]:
        return None, share
    return counts[0][0], share


# ------------------------------------------------------------------------------------- scorers and ensembles
class RewardModelJudge:
    """p = sigma(r(x, a) - r(x, b)) under a reward model ``scorer(prompts, completions) -> scores``. Each (prompt,
    response) is scored once and cached, so asking both orders costs nothing."""

    def __init__(self, scorer, abstain_band: float = 0.0):
        self.scorer, self.abstain_band, self.cache = scorer, abstain_band, {}

    def scores(self, prompts: list[str], responses: list[str]) -> list[float]:
        wanted = list(dict.fromkeys(key for key in zip(prompts, responses) if key not in self.cache))
        if wanted:
            self.cache.update(zip(wanted, self.scorer([p for p, _ in wanted], [r for _, r in wanted])))
        return [self.cache[key] for key in zip(prompts, responses)]

    def __call__(self, prompts, firsts, seconds, problems=None) -> list[Verdict]:
        prompts = list(prompts)
        a, b = self.scores(prompts, list(firsts)), self.scores(prompts, list(seconds))
        return [Verdict(p, within_band(p, self.abstain_band)) for p in (sigmoid(x - y) for x, y in zip(a, b))]


class RuleJudge:
    """A reward function ``fn(prompts, completions, problems) -> scores`` (a task's checker, a user callable): the
    higher score wins with p = 1; equal scores abstain. Without problems, each prompt becomes a Problem with no
    answer (enough for checkers that read only the completion)."""

    def __init__(self, fn, label: str = "rule"):
        self.fn, self.label = fn, label

    def __call__(self, prompts, firsts, seconds, problems=None) -> list[Verdict]:
        problems = list(problems) if problems is not None else [Problem(p, "") for p in prompts]
        prompts = list(prompts)
        scores = self.fn(prompts * 2, list(firsts) + list(seconds), problems * 2)
        n = len(prompts)
        return [Verdict(0.5, True) if x == y else Verdict(float(x > y)) for x, y in zip(scores[:n], scores[n:])]


class EnsembleJudge:
    """``members``: (weight, judge) pairs. p = sum_k w_k p_k / sum_k w_k over the members that did not abstain;
    abstains when all did, or within the band."""

    def __init__(self, members: list[tuple[float, Any]], abstain_band: float = 0.0):
        if not members or any(w <= 0 for w, _ in members):
            raise ConfigError("ensemble judge: give at least one member, each with a weight > 0")
        self.members, self.abstain_band = members, abstain_band

    def __call__(self, prompts, firsts, seconds, problems=None) -> list[Verdict]:
        each = [(w, judge(prompts, firsts, seconds, problems)) for w, judge in self.members]
        verdicts = []
        for i in range(len(prompts)):
            voting = [(w, v[i]) for w, v in each if not v[i].abstained]
            if not voting:
                verdicts.append(Verdict(0.5, True))
                continue
            p = sum(w * v.probability for w, v in voting) / sum(w for w, _ in voting)
            verdicts.append(Verdict(p, within_band(p, self.abstain_band)))
        return verdicts
