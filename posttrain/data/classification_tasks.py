"""Shipped classification and regression datasets, generated and seeded (regenerate with
``python -m posttrain.data.classification_tasks``; written to data/classify/).

``arithmetic_truth``: "37 + 48 = 85" labelled ``true`` or ``false``, balanced. A false statement's result is a near
miss of the true one (off by 1, 2 or 10, or its last two digits swapped), so no surface feature (length, the last
digit's parity, the result's size) tells them apart: only doing the sum does.

``sum_magnitude``: regression. The text is a sum or difference of two-digit numbers ("What is 37 + 48?"); the label is
the result divided by 100 (a value in about [-0.9, 2]). The model must estimate the result from the operands.

``review_sentiment`` and ``review_stars``: two-clause reviews ("The coffee was not terrible and the staff was
awful.") labelled positive/negative, or with a 1-5 star rating (regression). Negation flips a clause's polarity.

Train and eval statements never overlap: the split is decided by the expression's text with the rule of
``posttrain.tasks`` (``split_of``).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from posttrain.data.synthetic import write_jsonl
from posttrain.tasks.arithmetic import OPERATIONS, sample_operands
from posttrain.tasks.base import split_of


def near_miss(value: int, rng: random.Random) -> int:
    """A wrong result close to ``value``: off by 1, 2 or 10, or its last two digits swapped."""
    while True:
        kind = rng.choice(["1", "2", "10", "swap"])
        if kind == "swap" and abs(value) >= 10:
            sign, digits = (-1 if value < 0 else 1), str(abs(value))
            wrong = sign * int(digits[:-2] + digits[-1] + digits[-2])
        else:
            wrong = value + rng.choice([-1, 1]) * int(kind if kind != "swap" else "1")
        if wrong != value:
            return wrong


def _statements(split: str, n: int, seed: int, make):
    """``n`` rows of ``split`` from ``make(rng) -> (key, row)``, keys unique."""
    rng, rows, seen = random.Random(f"{seed}-{split}"), [], set()
    while len(rows) < n:
        key, row = make(rng)
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def arithmetic_truth(n_train: int = 2000, n_eval: int = 400, seed: int = 0) -> tuple[list[dict], list[dict]]:
    def make(rng):
        op = rng.choice(["+", "-"])
        a, b = sample_operands(rng, op, 10, 99)
        true = rng.random() < 0.5
        result = OPERATIONS[op](a, b) if true else near_miss(OPERATIONS[op](a, b), rng)
        text = f"{a} {op} {b} = {result}"
        return text, {"text": text, "label": "true" if true else "false"}

    return _statements("train", n_train, seed, make), _statements("eval", n_eval, seed, make)


def sum_magnitude(n_train: int = 2000, n_eval: int = 400, seed: int = 0) -> tuple[list[dict], list[dict]]:
    def make(rng):
        op = rng.choice(["+", "-"])
        a, b = sample_operands(rng, op, 10, 99)
        text = f"What is {a} {op} {b}?"
        return text, {"text": text, "label": OPERATIONS[op](a, b) / 100}

    return _statements("train", n_train, seed, make), _statements("eval", n_eval, seed, make)


ASPECTS = ["food", "service", "price", "room", "staff", "music", "coffee", "view", "location", "bed"]
# word -> polarity and strength: +-2 strong, +-1 mild
ADJECTIVES = {"excellent": 2, "wonderful": 2, "good": 1, "nice": 1, "terrible": -2, "awful": -2, "bad": -1,
              "poor": -1}
STARS = {-4: 1, -3: 1, -2: 2, -1: 2, 0: 3, 1: 4, 2: 4, 3: 5, 4: 5}


def review(rng: random.Random) -> tuple[str, int]:
    """Two clauses about two aspects; ``(text, score)`` with score the sum of the clauses' polarities in [-4, 4].
    A negated adjective flips its polarity and weakens it to 1 ("not terrible" is mildly positive), so a positive
    word in a negative review (and the reverse) is common: the words alone do not give the label."""
    clauses, score = [], 0
    for aspect in rng.sample(ASPECTS, 2):
        adjective = rng.choice(list(ADJECTIVES))
        if rng.random() < 0.4:
            clauses.append(f"the {aspect} was not {adjective}")
            score += -1 if ADJECTIVES[adjective] > 0 else 1
        else:
            clauses.append(f"the {aspect} was {adjective}")
            score += ADJECTIVES[adjective]
    joiner = rng.choice([" and ", ", ", "; "])
    return (joiner.join(clauses) + ".").capitalize(), score


def review_sentiment(n_train: int = 2000, n_eval: int = 400, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Short reviews with negation -> positive / negative (reviews whose clauses cancel out are left out)."""
    def make(rng):
        while True:
            text, score = review(rng)
            if score:
                return text, {"text": text, "label": "positive" if score > 0 else "negative"}

    return _statements("train", n_train, seed, make), _statements("eval", n_eval, seed, make)


def review_stars(n_train: int = 2000, n_eval: int = 400, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The same kind of reviews -> a star rating 1-5 (regression): 3 + the clauses' score / 2, rounded."""
    def make(rng):
        text, score = review(rng)
        return text, {"text": text, "label": float(STARS[score])}

    return _statements("train", n_train, seed, make), _statements("eval", n_eval, seed, make)


TASKS = {"arithmetic_truth": arithmetic_truth, "sum_magnitude": sum_magnitude, "review_sentiment": review_sentiment,
         "review_stars": review_stars}


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the shipped classification data (seeded).")
    parser.add_argument("--out", default="data/classify")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, generate in TASKS.items():
        train, evaluation = generate(seed=args.seed)
        write_jsonl(train, Path(args.out) / f"{name}_train.jsonl")
        write_jsonl(evaluation, Path(args.out) / f"{name}_eval.jsonl")
        print(f"{name}: wrote {len(train)} train and {len(evaluation)} eval rows to {args.out}")


if __name__ == "__main__":
    main()
