"""Constraints: a simple request plus instructions a program can check, e.g. "Write a short note about owls.
Use exactly 3 bullet points, each line starting with '- '. Include the word 'bright' in your response."

Constraint specs (the problem's answer is their JSON list) and their checks on a response r:
- {"type": "max_words", "n": N}: 1 <= count_words(r) <= N (words as defined in `posttrain.tasks.verbosity`);
- {"type": "lowercase"}: r has at least one letter and no uppercase letter;
- {"type": "bullets", "n": N}: exactly N lines start (after indentation) with "- ", "* " or "• "; other lines, such
  as an introduction, are allowed;
- {"type": "keyword", "word": W}: W occurs as a whole word, in any case ("owl" does not match "owls");
- {"type": "json", "key": K}: r, once stripped of surrounding whitespace and of a ```json code fence around it, parses
  as a JSON object that has the key K (K = null: any JSON object).

reward = (number of constraints satisfied) / (number of constraints): 1 or 0 for a single constraint.
is_correct: all satisfied. The split hashes the request alone, so a held-out request is never seen in training under
any constraints.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from posttrain.errors import ConfigError
from posttrain.tasks.base import Problem, Task
from posttrain.tasks.verbosity import TOPICS, count_words

REQUESTS = ["Write a short note about {topic}.", "Describe {topic}.", "Give some advice about {topic}.",
            "Tell me some facts about {topic}.", "Write a few sentences about {topic}.",
            "Explain what makes {topic} interesting."]
KEYWORDS = ["bright", "simple", "water", "history", "future", "friendly", "quickly", "important", "colour", "small",
            "together", "morning", "careful", "surprising", "green", "light", "quiet", "strong", "old", "happy"]
JSON_KEYS = ["summary", "answer", "title", "description", "facts"]
_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n\s*```$", re.DOTALL)


def _max_words(text: str, n: int) -> bool:
    return 1 <= count_words(text) <= n


def _lowercase(text: str) -> bool:
    return any(ch.isalpha() for ch in text) and not any(ch.isupper() for ch in text)


def _bullets(text: str, n: int) -> bool:
    return sum(bool(_BULLET.match(line)) for line in text.splitlines()) == n


def _keyword(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _json(text: str, key: str | None) -> bool:
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced[1] if fenced else text)
    except ValueError:
        return False
    return isinstance(value, dict) and (key is None or key in value)


CHECKS = {"max_words": _max_words, "lowercase": _lowercase, "bullets": _bullets, "keyword": _keyword, "json": _json}
INCOMPATIBLE = {frozenset({"json", "bullets"})}  # a bare JSON object has no bullet lines


def check_constraint(spec: dict, text: str) -> bool:
    """Whether `text` satisfies one constraint spec such as {"type": "bullets", "n": 3}."""
    params = {k: v for k, v in spec.items() if k != "type"}
    return CHECKS[spec["type"]](text, **params)


def describe(spec: dict) -> str:
    """The instruction sentence for a constraint spec."""
    kind = spec["type"]
    if kind == "max_words":
        return f"Answer in at most {spec['n']} words."
    if kind == "lowercase":
        return "Write your entire response in lowercase letters, with no capital letters."
    if kind == "bullets":
        return f"Use exactly {spec['n']} bullet points, each line starting with '- '."
    if kind == "keyword":
        return f"Include the word '{spec['word']}' in your response."
    key = f', with the key "{spec["key"]}"' if spec["key"] is not None else ""
    return f"Reply with a valid JSON object only{key}."


def _sample_spec(rng: random.Random, kind: str) -> dict:
    if kind == "max_words":
        return {"type": kind, "n": rng.randint(10, 60)}
    if kind == "bullets":
        return {"type": kind, "n": rng.randint(2, 5)}
    if kind == "keyword":
        return {"type": kind, "word": rng.choice(KEYWORDS)}
    if kind == "json":
        return {"type": kind, "key": rng.choice(JSON_KEYS)}
    return {"type": kind}


@dataclass
class ConstraintsTask(Task):
    """Each problem has between `min_constraints` and `max_constraints` constraints of distinct `types` (fewer when
    there are fewer types, or when incompatible types are drawn: json excludes bullets)."""

    name = "constraints"
    types: tuple = tuple(CHECKS)
    min_constraints: int = 1
    max_constraints: int = 2

    def __post_init__(self) -> None:
        self.types = tuple(dict.fromkeys(self.types))
        unknown = [t for t in self.types if t not in CHECKS]
        if unknown or not self.types:
            raise ConfigError(f"task 'constraints': types must be a non-empty list from {list(CHECKS)}, "
                              f"got {list(self.types)}")
        counts = (self.min_constraints, self.max_constraints)
        if not (all(isinstance(x, int) for x in counts) and 1 <= self.min_constraints <= self.max_constraints
                and self.min_constraints <= len(self.types)):
            raise ConfigError(f"task 'constraints': need integers 1 <= min_constraints <= max_constraints and "
                              f"min_constraints <= {len(self.types)} (the number of types), got "
                              f"{self.min_constraints!r} and {self.max_constraints!r}")

    def draw(self, rng: random.Random) -> Problem:
        request = rng.choice(REQUESTS).format(topic=rng.choice(TOPICS))
        k = rng.randint(self.min_constraints, self.max_constraints)
        kinds: list[str] = []
        for kind in rng.sample(self.types, len(self.types)):
            if len(kinds) < k and not any(frozenset({kind, other}) in INCOMPATIBLE for other in kinds):
                kinds.append(kind)
        specs = [_sample_spec(rng, kind) for kind in sorted(kinds, key=list(CHECKS).index)]
        answer = json.dumps(specs, sort_keys=True)
        prompt = " ".join([request] + [describe(spec) for spec in specs])
        meta = {"key": f"{request}|{answer}", "split_key": request, "request": request, "constraints": specs}
        return Problem(prompt, answer, meta)

    def results(self, problem: Problem, completion: str) -> list[bool]:
        """Whether each of the problem's constraints is satisfied, in order."""
        return [check_constraint(spec, completion) for spec in json.loads(problem.answer)]

    def reward(self, problem: Problem, completion: str) -> float:
        results = self.results(problem, completion)
        return sum(results) / len(results)

    def is_correct(self, problem: Problem, completion: str) -> bool:
        return all(self.results(problem, completion))
