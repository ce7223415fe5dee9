"""A constitution (Bai et al. 2022, "Constitutional AI", https://arxiv.org/abs/2212.08073): written principles, each
with the requests that make a model critique and revise its own response, an optional pairwise-judge question (the
RL stage's AI feedback), and an optional checker, so compliance can be measured rather than assumed.

    # constitution.yaml (or .json)
    name: concise
    principles:
      - name: brevity
        critique: "Point out anything in the response that is longer than the request needs."
        revision: "Rewrite the response to answer the request in as few words as possible."
        judge: "Which response answers the request more concisely?"        # optional
        checker: {word_limit: 30}                                           # optional, see CHECKERS
      - name: no_refusal
        critique: "Does the response refuse a harmless request?"
        revision: "Rewrite the response so that it helps with the request."
        checker: {not_refusal: true}

Checkers (each ``check(prompt, response) -> bool``, True: complies): ``word_limit: N`` (at most N words),
``required_pattern: REGEX`` (the response matches), ``forbidden_pattern: REGEX`` (it does not), ``refusal: true``
(the response refuses, for harmful requests), ``not_refusal: true`` (it does not), ``function: "module:function"``
(a callable ``(prompt, response) -> bool``). Every parsing error names the file and the key.

``ConstitutionalJudge`` is the RL stage's feedback model (RL-CAI, sec. 4): a principle's ``judge`` question asked of
a pair by a ``PairwiseJudge``, one principle drawn per pair.
"""

from __future__ import annotations

import re
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from posttrain.config import read_config_file
from posttrain.errors import ConfigError
from posttrain.rollout.judges import PairwiseJudge, Verdict
from posttrain.rollout.rewards import load_function

# a reply that declines: the phrases instruction-tuned models refuse with (the last three: SmolLM2-Instruct's "I'm
# sorry for any misunderstanding, but as a chatbot ..., I don't have the capability to / I'm not equipped to ...")
REFUSAL_PATTERN = re.compile(
    r"\b(I\s+(?:can(?:'|no)t|cannot|won't|will\s+not|am\s+not\s+able\s+to|'m\s+not\s+able\s+to|am\s+unable\s+to|"
    r"'m\s+unable\s+to|must\s+decline)|I'm\s+sorry,?\s+but|I\s+am\s+sorry,?\s+but|as\s+an\s+AI|"
    r"I(?:'m|\s+am)\s+not\s+equipped\s+to|"
    r"I(?:'m|\s+am)\s+sorry\s+for\s+any\s+(?:misunderstanding|confusion),?\s+but|"
    r"I\s+(?:don't|do\s+not)\s+have\s+the\s+(?:capability|ability)\s+to)\b", re.IGNORECASE)
PAIRWISE_QUESTION_TEMPLATE = (
    "Consider this request and two responses to it.\n\n[Request]\n{{prompt}}\n\n[Response A]\n{{first}}\n\n"
    "[Response B]\n{{second}}\n\n{question} {answer}")
ANSWER = "Reply with one letter, A or B."
COT_ANSWER = "Think it through step by step, then give your verdict as [[A]] or [[B]]."  # the judges' COT_SUFFIX


def is_refusal(text: str) -> bool:
    return REFUSAL_PATTERN.search(text) is not None


def _word_limit(limit: int) -> Callable[[str, str], bool]:
    return lambda prompt, response: len(response.split()) <= limit


def _pattern(pattern: str, present: bool) -> Callable[[str, str], bool]:
    compiled = re.compile(pattern)
    return lambda prompt, response: (compiled.search(response) is not None) == present


# checker key -> (what its value must be, how to build the check from it)
CHECKERS: dict[str, tuple[str, Callable[[Any], Callable[[str, str], bool]]]] = {
    "word_limit": ("a whole number of words >= 1", _word_limit),
    "required_pattern": ("a regular expression", lambda p: _pattern(p, True)),
    "forbidden_pattern": ("a regular expression", lambda p: _pattern(p, False)),
    "refusal": ("true", lambda _: lambda prompt, response: is_refusal(response)),
    "not_refusal": ("true", lambda _: lambda prompt, response: not is_refusal(response)),
    "function": ("'module:function', a callable (prompt, response) -> bool", load_function),
}


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # the request that makes the model critique its response
    revision: str  # the request that makes it revise the response in the light of the critique
    judge: str | None = None  # a question for a pairwise judge: "Which response ...?"
    checker: Callable[[str, str], bool] | None = field(default=None, compare=False)

    def complies(self, prompt: str, response: str) -> bool | None:
        """The checker's verdict; None when the principle has no checker."""
        return None if self.checker is None else bool(self.checker(prompt, response))

    def judge_template(self, cot: bool = False) -> str | None:
        """The pairwise judge template (``posttrain.rollout.judges.PairwiseJudge``) asking this principle's question
        (``cot``: asking for reasoning before the verdict)."""
        if self.judge is None:
            return None
        return PAIRWISE_QUESTION_TEMPLATE.format(question=self.judge, answer=COT_ANSWER if cot else ANSWER)


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]

    @property
    def checked(self) -> tuple[Principle, ...]:
        """The principles with a checker: those whose compliance can be measured."""
        return tuple(p for p in self.principles if p.checker is not None)


def checks_passed(principles, prompt: str, response: str) -> int:
    """How many of the principles' checkers accept the response (a principle without a checker accepts nothing)."""
    return sum(bool(p.complies(prompt, response)) for p in principles)


def load_constitution(path: str | Path) -> Constitution:
    """A constitution file, checked; a ConfigError names the file and the key at fault."""
    source = str(path)
    if not Path(path).is_file():
        raise ConfigError(f"constitution {source!r}: no such file")
    data = read_config_file(path)
    return parse_constitution(data, source)


def parse_constitution(data: Any, source: str = "constitution") -> Constitution:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a constitution is a mapping with `principles` (and an optional `name`)")
    unknown = sorted(set(data) - {"name", "principles"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {', '.join(map(repr, unknown))}; expected name, principles")
    principles = data.get("principles")
    if not isinstance(principles, list) or not principles:
        raise ConfigError(f"{source}: principles: expected a non-empty list of principles")
    parsed = tuple(_principle(entry, f"{source}: principles[{i}]") for i, entry in enumerate(principles))
    names = [p.name for p in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{source}: principles: the name {repeated[0]!r} is used twice")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: name: expected a non-empty string, got {name!r}")
    return Constitution(name, parsed)


def _principle(entry: Any, where: str) -> Principle:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with name, critique, revision (judge, checker optional)")
    unknown = sorted(set(entry) - {"name", "critique", "revision", "judge", "checker"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))}; expected name, critique, revision, "
                          "judge, checker")
    for key in ("name", "critique", "revision"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise ConfigError(f"{where}.{key}: missing or empty; expected a non-empty string")
    if "judge" in entry and (not isinstance(entry["judge"], str) or not entry["judge"].strip()):
        raise ConfigError(f"{where}.judge: expected a question for a pairwise judge, got {entry['judge']!r}")
    checker = _checker(entry["checker"], f"{where}.checker") if "checker" in entry else None
    return Principle(entry["name"], entry["critique"], entry["revision"], entry.get("judge"), checker)


def _checker(spec: Any, where: str) -> Callable[[str, str], bool]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one of {{{', '.join(f'{k}: ...' for k in CHECKERS)}}}, got {spec!r}")
    (kind, value), = spec.items()
    if kind not in CHECKERS:
        raise ConfigError(f"{where}: unknown checker {kind!r}; expected one of {', '.join(CHECKERS)}")
    expected, build = CHECKERS[kind]
    valid = {"word_limit": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             "refusal": value is True, "not_refusal": value is True}.get(kind, isinstance(value, str) and bool(value))
    if not valid:
        raise ConfigError(f"{where}.{kind}: expected {expected}, got {value!r}")
    try:
        return build(value)
    except re.error as exc:
        raise ConfigError(f"{where}.{kind}: not a valid regular expression ({exc})") from None


class ConstitutionalJudge:
    """RL-CAI's feedback model (Bai et al. 2022, sec. 4.1): for each pair one principle is drawn from those with a
    ``judge`` question, and a ``PairwiseJudge`` with that question's template gives the verdict (both orders, label
    log-probs; ``options``: the pairwise judge's, e.g. ``cot``). The draw is seeded by ``seed`` and the pair's texts,
    so a pair gets the same principle however the pairs are batched or ordered, and a rerun draws the same ones.
    Each verdict names its principle."""

    def __init__(self, constitution: Constitution, model, tokenizer, seed: int = 0, **options):
        self.principles = [p for p in constitution.principles if p.judge is not None]
        if not self.principles:
            raise ConfigError(f"constitution {constitution.name!r}: no principle has a `judge` question, which the "
                              "RL stage's judge asks")
        cot = options.get("cot", False)
        self.judges = {p.name: PairwiseJudge(model, tokenizer, p.judge_template(cot), **options)
                       for p in self.principles}
        self.seed = seed

    def principle(self, prompt: str, first: str, second: str) -> Principle:
        return random.Random(f"{self.seed}/{prompt}\0{first}\0{second}").choice(self.principles)

    def __call__(self, prompts, firsts, seconds, problems=None) -> list[Verdict]:
        prompts, firsts, seconds = list(prompts), list(firsts), list(seconds)
        drawn = [self.principle(*pair).name for pair in zip(prompts, firsts, seconds)]
        verdicts: list[Verdict] = [Verdict(0.5, True)] * len(drawn)
        for name, judge in self.judges.items():  # one batched call per principle
            index = [i for i, d in enumerate(drawn) if d == name]
            if index:
                got = judge([prompts[i] for i in index], [firsts[i] for i in index], [seconds[i] for i in index])
                for i, verdict in zip(index, got):
                    verdicts[i] = replace(verdict, principle=name)
        return verdicts


def checker_counts(constitution: Constitution) -> Callable[[list, list, list], list[float]]:
    """A rule (``posttrain.rollout.judges.RuleJudge``): each response's count of the principles' checkers that accept
    it, so of two responses the one more principles accept wins and equal counts abstain. The RL stage labelled by
    the constitution itself: what the feedback model would give if it judged as the checkers measure."""
    if not constitution.checked:
        raise ConfigError(f"constitution {constitution.name!r}: no principle has a checker to judge with")

    def counts(prompts, completions, problems=None) -> list[float]:
        return [float(checks_passed(constitution.checked, prompt, text)) for prompt, text in zip(prompts, completions)]
    return counts


def principle_agreement(constitution: Constitution, rows: list[dict]) -> dict:
    """Over labelled pairs (prompt, chosen, rejected, principle), among those where the drawn principle's checker
    accepts exactly one response: the share where it accepts the chosen one (the checkers measure the labels, never
    make them)."""
    by_name = {p.name: p for p in constitution.principles}
    decisive = []
    for row in rows:
        principle = by_name.get(row.get("principle"))
        if principle is None or principle.checker is None:
            continue
        chosen, rejected = (principle.complies(row["prompt"], row[k]) for k in ("chosen", "rejected"))
        if chosen != rejected:
            decisive.append(chosen)
    return {"principle_decisive_pairs": len(decisive),
            "principle_agreement": sum(decisive) / len(decisive) if decisive else None}
