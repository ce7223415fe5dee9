"""Word problems: seeded templates (shopping, change, ages, rates, travel, sharing, savings, boxes) of 2-3 steps
whose answer is a positive integer; chain-of-thought friendly (the prompt invites step-by-step reasoning, then
"The answer is N."). Reward and correctness are those of `arithmetic` (see `posttrain.tasks.arithmetic`), with no
partial credit by default: a number close to the answer of a multi-step problem is usually a wrong method.

meta["solution"] holds a worked solution, one equation per step, usable as an SFT completion.

With ``num_steps`` (e.g. ``[2, 3, 4, 5, 6]``) the problems are chained stories instead of the templates, with exactly
that many equations (`posttrain.tasks.story_chains`), the step counts taken in turn so that any list of problems is
balanced over them; without it (the default) the problems are the templates', unchanged. ``format: direct`` asks
for the answer alone (``DIRECT_INSTRUCTION``; meta["solution"] is then "The answer is N."): the same problems, for
the direct-answer arm of a CoT experiment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from posttrain.errors import ConfigError
from posttrain.tasks.arithmetic import DIRECT_INSTRUCTION, NumericTask
from posttrain.tasks.base import Problem
from posttrain.tasks.story_chains import chained_story

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jade", "Kofi", "Lena"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stickers", "cards", "shells"]
INSTRUCTION = "Think step by step, then give the final answer as 'The answer is N.'"
_GOODS = [("notebooks", 2, 9), ("pens", 1, 5), ("apples", 1, 3), ("toy cars", 3, 12), ("mugs", 4, 10),
          ("posters", 2, 8)]
_MACHINES = [("printer", "pages"), ("bakery oven", "loaves"), ("factory robot", "parts"), ("juicer", "bottles")]
_VEHICLES = ["train", "car", "bus", "boat"]


def one_step_story(rng: random.Random, a: int, op: str, b: int) -> str:
    """A one-step story for `a + b` or `a - b` ("Ana has 63 shells and gets 15 more. ..."), used by the SFT data."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    verb = f"gets {b} more" if op == "+" else f"gives away {b}"
    return f"{name} has {a} {item} and {verb}. How many {item} does {name} have now?"


# Each template: rng -> (problem text, steps as "x op y = z" equations, answer). Answers are positive integers.

def _shopping_total(rng):
    name = rng.choice(NAMES)
    (g1, lo1, hi1), (g2, lo2, hi2) = rng.sample(_GOODS, 2)
    n1, p1, n2, p2 = rng.randint(2, 9), rng.randint(lo1, hi1), rng.randint(2, 9), rng.randint(lo2, hi2)
    text = (f"{name} buys {n1} {g1} for ${p1} each and {n2} {g2} for ${p2} each. "
            f"How many dollars does {name} spend in total?")
    c1, c2 = n1 * p1, n2 * p2
    return text, [f"{n1} * {p1} = {c1}", f"{n2} * {p2} = {c2}", f"{c1} + {c2} = {c1 + c2}"], c1 + c2


def _shopping_change(rng):
    name, (good, lo, hi) = rng.choice(NAMES), rng.choice(_GOODS)
    n, p = rng.randint(2, 9), rng.randint(lo, hi)
    cost = n * p
    bill = next(b for b in (20, 50, 100, 200) if b > cost)
    text = (f"{name} buys {n} {good} for ${p} each and pays with a ${bill} bill. "
            f"How many dollars of change does {name} get?")
    return text, [f"{n} * {p} = {cost}", f"{bill} - {cost} = {bill - cost}"], bill - cost


def _ages(rng):
    a, b = rng.sample(NAMES, 2)
    x, y, z = rng.randint(4, 30), rng.randint(2, 15), rng.randint(2, 20)
    if rng.random() < 0.5:
        text = f"{a} is {x} years old. {b} is {y} years older than {a}. How old will {b} be in {z} years?"
        return text, [f"{x} + {y} = {x + y}", f"{x + y} + {z} = {x + y + z}"], x + y + z
    k = rng.randint(2, 4)
    z = rng.randint(1, x * k - 1)
    text = f"{a} is {x} years old. {b} is {k} times as old as {a}. How old was {b} {z} years ago?"
    return text, [f"{x} * {k} = {x * k}", f"{x * k} - {z} = {x * k - z}"], x * k - z


def _rates(rng):
    machine, things = rng.choice(_MACHINES)
    r, h1, h2 = rng.randint(5, 60), rng.randint(2, 6), rng.randint(2, 6)
    text = (f"A {machine} makes {r} {things} per hour. It runs for {h1} hours in the morning and {h2} hours in the "
            f"afternoon. How many {things} does it make?")
    return text, [f"{h1} + {h2} = {h1 + h2}", f"{r} * {h1 + h2} = {r * (h1 + h2)}"], r * (h1 + h2)


def _travel(rng):
    vehicle = rng.choice(_VEHICLES)
    v1, t1, v2, t2 = rng.randint(20, 90), rng.randint(2, 5), rng.randint(20, 90), rng.randint(2, 5)
    text = (f"A {vehicle} travels at {v1} km per hour for {t1} hours, then at {v2} km per hour for {t2} hours. "
            f"How many km does it travel in total?")
    d1, d2 = v1 * t1, v2 * t2
    return text, [f"{v1} * {t1} = {d1}", f"{v2} * {t2} = {d2}", f"{d1} + {d2} = {d1 + d2}"], d1 + d2


def _sharing(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    each, friends, keep = rng.randint(2, 15), rng.randint(2, 6), rng.randint(1, 20)
    rest = each * friends
    text = (f"{name} has {rest + keep} {item}. {name} keeps {keep} and shares the rest equally among {friends} "
            f"friends. How many {item} does each friend get?")
    return text, [f"{rest + keep} - {keep} = {rest}", f"{rest} / {friends} = {each}"], each


def _savings(rng):
    name = rng.choice(NAMES)
    s, w = rng.randint(3, 25), rng.randint(2, 12)
    total = s * w
    c = rng.randint(1, total - 1)
    text = (f"{name} saves ${s} every week for {w} weeks, then spends ${c} on a present. "
            f"How many dollars does {name} have left?")
    return text, [f"{s} * {w} = {total}", f"{total} - {c} = {total - c}"], total - c


def _boxes(rng):
    item = rng.choice(ITEMS)
    per, boxes = rng.randint(4, 24), rng.randint(2, 12)
    total = per * boxes
    sold = rng.randint(1, total - 1)
    text = f"A box holds {per} {item}. A shop has {boxes} boxes and sells {sold} {item}. How many {item} are left?"
    return text, [f"{per} * {boxes} = {total}", f"{total} - {sold} = {total - sold}"], total - sold


TEMPLATES = {"shopping": _shopping_total, "change": _shopping_change, "ages": _ages, "rates": _rates,
             "travel": _travel, "sharing": _sharing, "savings": _savings, "boxes": _boxes}


@dataclass
class WordProblemsTask(NumericTask):
    """Templates named in `templates` (default all of TEMPLATES) drawn uniformly; or, with `num_steps`, chained
    stories of exactly that many steps, taken in turn."""

    name = "word_problems"
    partial_credit: float = 0.0
    instruction: str | None = None  # None: the format's
    templates: tuple = tuple(TEMPLATES)
    num_steps: tuple | None = None
    format: Literal["cot", "direct"] = "cot"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in ("cot", "direct"):
            raise ConfigError(f"task 'word_problems': format must be cot or direct, got {self.format!r}")
        if self.instruction is None:
            self.instruction = INSTRUCTION if self.format == "cot" else DIRECT_INSTRUCTION
        self.templates = tuple(self.templates)
        unknown = [t for t in self.templates if t not in TEMPLATES]
        if unknown or not self.templates:
            raise ConfigError(f"task 'word_problems': templates must be a non-empty list from {list(TEMPLATES)}, "
                              f"got {list(self.templates)}")
        if self.num_steps is not None:
            steps = [self.num_steps] if isinstance(self.num_steps, int) else list(self.num_steps)
            if not steps or not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 10 for k in steps):
                raise ConfigError(f"task 'word_problems': num_steps must be a non-empty list of integers in 1..10 "
                                  f"(e.g. [2, 3, 4, 5, 6]), got {self.num_steps!r}")
            self.num_steps = tuple(steps)

    def draw_at(self, rng: random.Random, index: int) -> Problem:
        if self.num_steps is None:
            return self.draw(rng)
        return self._chained(rng, self.num_steps[index % len(self.num_steps)])

    def draw(self, rng: random.Random) -> Problem:
        if self.num_steps is not None:
            return self._chained(rng, rng.choice(self.num_steps))
        template = rng.choice(self.templates)
        text, steps, answer = TEMPLATES[template](rng)
        return self._problem(text, steps, answer, template)

    def _chained(self, rng: random.Random, steps: int) -> Problem:
        return self._problem(*chained_story(rng, steps, NAMES, ITEMS), "chain")

    def _problem(self, text: str, steps: list[str], answer: int, template: str) -> Problem:
        solution = " ".join(f"{step}." for step in steps) + f" The answer is {answer}."
        if self.format == "direct":
            solution = f"The answer is {answer}."
        meta = {"key": text, "template": template, "steps": steps, "solution": solution}
        return Problem(self.prompt(text), str(answer), meta)
