"""Arithmetic: "What is 47 - 18? Reply with the final answer as 'The answer is N.'"; and the one home of numeric
answer parsing (`parse_answer`, `extract_answer`) and of arithmetic problem generation (`sample_operands`,
`question`, `worked_solution`), which `posttrain.data.synthetic` and `word_problems` reuse.

Reward of a completion c for the true answer y (prediction p = extract_answer(c)):

    correctness = 1                                                  if p == y
                = partial_credit * max(0, 1 - |p - y| / max(|y|, 1))  if p is a number (a near miss)
                = 0                                                  if c holds no number
    format      = 1 if c contains the sentence "The answer is N." (parse_answer(c) is not None) else 0
    reward      = (1 - format_weight) * correctness + format_weight * format          in [0, 1]

is_correct: p == y (the format is not required).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.errors import ConfigError
from posttrain.tasks.base import Problem, Task, check_fraction
from posttrain.tasks.steps import check_steps

INSTRUCTION = "Reply with the final answer as 'The answer is N.'"
DIRECT_INSTRUCTION = "Give only the final answer as 'The answer is N.'"  # the no-reasoning prompts of CoT experiments
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

# A number: an optional minus sign (ASCII or U+2212) that does not follow a word character or ")" (so "47-18" is
# 47 and 18, while "= -18" is -18), digits with optional thousands commas ("1,234"), an optional decimal part. A
# sentence's trailing period is not a decimal part ("29." is 29).
_NUMBER = r"(?:(?<![\w)])(?P<sign>[-\u2212]))?(?<!\d)(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.(?P<frac>\d+))?"
NUMBER_PATTERN = re.compile(_NUMBER)
# The requested form, "The answer is N." with its period: what the format component rewards.
ANSWER_PATTERN = re.compile(r"\b[Tt]he answer is " + _NUMBER + r"(?!\.\d)\.")
# Looser wordings a model also uses to state its answer: "the final answer is: **-18**", "Answer: 29".
_ANSWER_PHRASE = re.compile(r"\banswer(?:\s+is)?\s*[:=]?\s*[*_$\s]*" + _NUMBER, re.IGNORECASE)


def _to_number(match: re.Match) -> int | float:
    integer = int(match["int"].replace(",", ""))
    frac = match["frac"]
    value: int | float = integer if frac is None or int(frac) == 0 else float(f"{integer}.{frac}")
    return -value if match["sign"] else value


def parse_answer(text: str) -> int | float | None:
    """The N of the last "The answer is N." sentence in `text` (commas, a minus sign allowed), or None if there is
    no such sentence. This is the format check: it says whether the requested form is present."""
    matches = list(ANSWER_PATTERN.finditer(text))
    return _to_number(matches[-1]) if matches else None


def extract_answer(text: str) -> int | float | None:
    """The number a completion gives as its answer: the last "the answer is N" phrase (any case, an optional colon
    or markdown emphasis, the period optional), else the last number anywhere in the text, else None."""
    matches = list(_ANSWER_PHRASE.finditer(text)) or list(NUMBER_PATTERN.finditer(text))
    return _to_number(matches[-1]) if matches else None


def numeric_reward(completion: str, answer: int | float, partial_credit: float, format_weight: float) -> float:
    """The reward rule of the module docstring (shared by `arithmetic` and `word_problems`)."""
    predicted = extract_answer(completion)
    if predicted is None:
        correctness = 0.0
    elif predicted == answer:
        correctness = 1.0
    else:  # compare before dividing: a 400-digit "answer" would overflow a float
        error, scale = abs(predicted - answer), max(abs(answer), 1)
        correctness = partial_credit * (1.0 - error / scale) if error < scale else 0.0
    has_format = parse_answer(completion) is not None
    return (1.0 - format_weight) * correctness + format_weight * has_format


def sample_operands(rng: random.Random, op: str, low: int, high: int, negative: bool = False) -> tuple[int, int]:
    """Two operands uniform in [low, high]; for "-" without `negative`, ordered so the result is >= 0."""
    a, b = rng.randint(low, high), rng.randint(low, high)
    if op == "-" and not negative and b > a:
        a, b = b, a
    return a, b


def question(a: int, op: str, b: int) -> str:
    """The bare question, "What is 47 - 18?": the canonical key of an arithmetic problem."""
    return f"What is {a} {op} {b}?"


def worked_solution(a: int, op: str, b: int) -> str:
    """A short reference completion, "47 - 18 = 29. The answer is 29."."""
    result = OPERATIONS[op](a, b)
    return f"{a} {op} {b} = {result}. The answer is {result}."


def digit_range(digits: int) -> tuple[int, int]:
    """Operands with exactly `digits` digits (1 digit: 1..9)."""
    return 10 ** (digits - 1), 10**digits - 1


def _parse_number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


@dataclass
class NumericTask(Task):
    """A task whose answer is one number; reward and correctness follow the module docstring."""

    partial_credit: float = 0.25
    format_weight: float = 0.1
    instruction: str = INSTRUCTION

    def __post_init__(self) -> None:
        check_fraction(self.name, "partial_credit", self.partial_credit)
        check_fraction(self.name, "format_weight", self.format_weight)

    def prompt(self, text: str) -> str:
        return f"{text} {self.instruction}" if self.instruction else text

    def reward(self, problem: Problem, completion: str) -> float:
        return numeric_reward(completion, _parse_number(problem.answer), self.partial_credit, self.format_weight)

    def is_correct(self, problem: Problem, completion: str) -> bool:
        return extract_answer(completion) == _parse_number(problem.answer)

    def check_steps(self, problem: Problem, completion: str) -> tuple[int, int]:
        """``(correct, written)`` intermediate equations of a completion (`posttrain.tasks.steps`); a task with a
        stricter step check (`long_addition`'s columns) overrides it."""
        return check_steps(completion)


@dataclass
class ArithmeticTask(NumericTask):
    """`a op b` with `digits`-digit operands (`mul_digits` for "*", default `digits`) and `operations` drawn
    uniformly; subtraction results are >= 0 unless `negative`."""

    name = "arithmetic"
    digits: int = 2
    operations: str = "+-"
    mul_digits: int | None = None
    negative: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        ops = tuple(self.operations)  # "+-*" or ["+", "-"] from a config file
        if not ops or any(op not in OPERATIONS for op in ops):
            raise ConfigError(f"task 'arithmetic': operations must be a non-empty subset of {sorted(OPERATIONS)}, "
                              f"got {self.operations!r}")
        self.operations = "".join(dict.fromkeys(ops))
        for option in ("digits", "mul_digits"):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, int) or not 1 <= value <= 9):
                raise ConfigError(f"task 'arithmetic': option {option!r} must be an integer in 1..9, got {value!r}")

    def draw(self, rng: random.Random) -> Problem:
        op = rng.choice(self.operations)
        digits = self.mul_digits if op == "*" and self.mul_digits is not None else self.digits
        a, b = sample_operands(rng, op, *digit_range(digits), negative=self.negative)
        text = question(a, op, b)
        meta = {"key": text, "a": a, "op": op, "b": b, "solution": worked_solution(a, op, b)}
        return Problem(self.prompt(text), str(OPERATIONS[op](a, b)), meta)
