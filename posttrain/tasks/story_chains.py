"""Chained word problems with an exact number of steps (the `word_problems` task's ``num_steps`` option).

A story starts from a quantity (a count of things, or dollars) and changes it sentence by sentence; each sentence
costs one equation ("Ben finds 12 more shells": ``34 + 12 = 46``) or two ("Ben buys 3 packs of 8 shells":
``3 * 8 = 24``, ``46 + 24 = 70``). Events are drawn until the solution has exactly ``steps`` equations, so problems of
2 to 6 (or more) operations differ in length of reasoning, not in kind:

    Kofi has 4 bags of 9 cards. Kofi gives away 7 cards. Then Kofi buys 3 packs of 5 cards. How many cards does Kofi
    have now?        ->  4 * 9 = 36. 36 - 7 = 29. 3 * 5 = 15. 29 + 15 = 44. The answer is 44.      (4 steps)

Every intermediate value is an integer from 2 to ``CAP`` (divisions are exact), so each equation is one a small
model can be taught to write and `posttrain.tasks.steps.check_steps` can verify.
"""

from __future__ import annotations

import random

CAP = 999  # intermediate values stay three-digit: the difficulty is the number of steps, not the size of numbers
_THINGS = ["a book", "a lamp", "a jacket", "a bike helmet", "a board game", "a kite"]
_GOODS = ["notebooks", "mugs", "tickets", "plants", "puzzles"]


def chained_story(rng: random.Random, steps: int, names: list[str], items: list[str]) -> tuple[str, list[str], int]:
    """``(problem text, equations, answer)`` of a story whose solution has exactly ``steps`` equations."""
    name = rng.choice(names)
    money = rng.random() < 0.5
    unit = "dollars" if money else rng.choice(items)
    sentences, equations = [], []
    if steps >= 2 and rng.random() < 0.5:  # a start that is itself a step
        b, c = rng.randint(2, 6), rng.randint(3, 12)
        value = b * c
        sentences.append(f"{name} earns ${c} an hour for {b} hours." if money
                         else f"{name} has {b} bags of {c} {unit}.")
        equations.append(f"{b} * {c} = {value}")
    else:
        value = rng.randint(10, 60)
        sentences.append(f"{name} has ${value}." if money else f"{name} has {value} {unit}.")
    while len(equations) < steps:
        left = steps - len(equations)
        event = rng.choice([e for e in _EVENTS if e[1] <= left and e[2](value)])
        sentence, new_equations, value = event[0](rng, name, unit, money, value)
        if rng.random() < 0.3:
            sentence = "Then " + (sentence if sentence.startswith(name) else sentence[0].lower() + sentence[1:])
        sentences.append(sentence)
        equations += new_equations
    question = f"How many dollars does {name} have now?" if money else f"How many {unit} does {name} have now?"
    return " ".join(sentences + [question]), equations, value


# Each event: (write(rng, name, unit, money, value) -> (sentence, equations, new value), equations, applies(value)).

def _gain(rng, name, unit, money, value):
    x = rng.randint(3, min(60, CAP - value))
    sentence = (f"{name} gets ${x} from a neighbour." if money else f"{name} finds {x} more {unit}.")
    return sentence, [f"{value} + {x} = {value + x}"], value + x


def _lose(rng, name, unit, money, value):
    x = rng.randint(2, min(60, value - 2))
    sentence = f"{name} spends ${x} on {rng.choice(_THINGS)}." if money else f"{name} gives away {x} {unit}."
    return sentence, [f"{value} - {x} = {value - x}"], value - x


def _gain_groups(rng, name, unit, money, value):
    p = rng.randint(2, min(6, (CAP - value) // 2))
    q = rng.randint(2, min(12, (CAP - value) // p))
    sentence = (f"{name} sells {p} {rng.choice(_GOODS)} for ${q} each." if money
                else f"{name} buys {p} packs of {q} {unit}.")
    return sentence, [f"{p} * {q} = {p * q}", f"{value} + {p * q} = {value + p * q}"], value + p * q


def _lose_groups(rng, name, unit, money, value):
    p = rng.randint(2, min(6, (value - 2) // 2))
    q = rng.randint(2, min(12, (value - 2) // p))
    sentence = (f"{name} buys {p} {rng.choice(_GOODS)} for ${q} each." if money
                else f"{name} gives {p} friends {q} {unit} each.")
    return sentence, [f"{p} * {q} = {p * q}", f"{value} - {p * q} = {value - p * q}"], value - p * q


def _times(rng, name, unit, money, value):
    k = rng.choice([k for k in (2, 3) if value * k <= CAP])
    word = {2: "doubles", 3: "triples"}[k]
    sentence = (f"A prize {word} the money {name} has." if money else f"A gift {word} the number of {unit} {name} has.")
    return sentence, [f"{value} * {k} = {value * k}"], value * k


def _share(rng, name, unit, money, value):
    k = rng.choice(_divisors(value))
    sentence = (f"{name} shares the money equally among {k} people, {name} included, and keeps one share."
                if money else f"{name} puts the {unit} equally into {k} boxes and keeps one box.")
    return sentence, [f"{value} / {k} = {value // k}"], value // k


def _divisors(value: int) -> list[int]:
    return [k for k in range(2, 7) if value % k == 0 and value // k >= 2]


_EVENTS = [
    (_gain, 1, lambda v: v <= CAP - 3),
    (_lose, 1, lambda v: v >= 4),
    (_gain_groups, 2, lambda v: v <= CAP - 4),
    (_lose_groups, 2, lambda v: v >= 6),
    (_times, 1, lambda v: 2 * v <= CAP),
    (_share, 1, lambda v: bool(_divisors(v))),
]
