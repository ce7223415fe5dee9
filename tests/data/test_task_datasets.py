"""The shipped classification, regression and CoT datasets: labels are right, classes balanced, splits disjoint,
and the files on disk are what the generators write (seeded)."""

import json
import re
from pathlib import Path

from posttrain.data.classification_tasks import arithmetic_truth, near_miss, sum_magnitude
from posttrain.data.cot import cot_rows

DATA = Path(__file__).resolve().parents[2] / "data"


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def evaluate(expression):
    a, op, b = expression.split()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def test_arithmetic_truth_labels_balance_and_splits():
    train, held_out = arithmetic_truth(n_train=400, n_eval=100, seed=3)
    for row in train + held_out:
        left, right = row["text"].split(" = ")
        assert (evaluate(left) == int(right)) == (row["label"] == "true"), row
    assert 0.4 < sum(r["label"] == "true" for r in train) / len(train) < 0.6
    assert not {r["text"] for r in train} & {r["text"] for r in held_out}
    assert read(DATA / "classify" / "arithmetic_truth_eval.jsonl") == arithmetic_truth()[1]


def test_near_misses_are_close_and_wrong():
    import random

    rng = random.Random(0)
    for value in (5, 17, 85, 120, 0, -12):
        for _ in range(20):
            wrong = near_miss(value, rng)
            assert wrong != value and (abs(wrong - value) in (1, 2, 10) or sorted(str(wrong)) == sorted(str(value)))


def test_sum_magnitude_targets():
    train, held_out = sum_magnitude(n_train=50, n_eval=20)
    for row in train + held_out:
        expression = re.match(r"What is (.+)\?", row["text"])[1]
        assert row["label"] == evaluate(expression) / 100
    assert read(DATA / "classify" / "sum_magnitude_train.jsonl")[:50] == sum_magnitude(n_train=50)[0]


def test_cot_and_direct_rows_share_problems_and_the_steps_check_out():
    cot, direct = cot_rows("eval", 40)
    assert [(r["answer"], r["steps"]) for r in cot] == [(r["answer"], r["steps"]) for r in direct]
    for c, d in zip(cot, direct):
        assert c["prompt"].split("?")[0] == d["prompt"].split("?")[0]
        assert d["completion"] == f"The answer is {d['answer']}."
        assert c["completion"].endswith(f"The answer is {c['answer']}.")
        equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", c["completion"])
        assert len(equations) == c["steps"]
        for a, op, b, result in equations:
            assert eval(f"{a} {op} {b}") == int(result)
    train_prompts = {r["prompt"] for r in read(DATA / "cot" / "word_problems_cot_train.jsonl")}
    assert not train_prompts & {r["prompt"] for r in read(DATA / "cot" / "word_problems_cot_eval.jsonl")}
    assert read(DATA / "cot" / "word_problems_direct_eval.jsonl")[:40] == direct


def review_score(text):
    """The review's score read back from its words: each clause's adjective, flipped and weakened when negated."""
    from posttrain.data.classification_tasks import ADJECTIVES

    score = 0
    for negated, adjective in re.findall(r"was (not )?(\w+)", text):
        score += (-1 if ADJECTIVES[adjective] > 0 else 1) if negated else ADJECTIVES[adjective]
    return score


def test_review_labels_follow_negation_and_stars():
    from posttrain.data.classification_tasks import STARS, review_sentiment, review_stars

    train, held_out = review_sentiment(n_train=300, n_eval=60, seed=2)
    for row in train + held_out:
        assert row["label"] == ("positive" if review_score(row["text"]) > 0 else "negative"), row
    assert 0.4 < sum(r["label"] == "positive" for r in train) / len(train) < 0.6
    assert not {r["text"] for r in train} & {r["text"] for r in held_out}
    # a negated word of the other polarity is common: the words alone do not give the label
    assert sum(" not " in r["text"] for r in train) > len(train) / 2
    for row in review_stars(n_train=100, n_eval=0)[0]:
        assert row["label"] == STARS[review_score(row["text"])]
    assert read(DATA / "classify" / "review_stars_eval.jsonl") == review_stars()[1]
