"""Small seeded datasets the project ships (regenerate with ``python -m posttrain.data.synthetic``).

``arithmetic_sft``: two-digit arithmetic and one-step word problems, answered concisely with the working and a
fixed final sentence, ``"... The answer is N."``. The embedded model answers these verbosely and often wrongly
(``12 + 7 = 9`` ...), so a short SFT run has something measurable to learn: the answer format, and some accuracy.
Train and eval questions never overlap (the split is decided by the question text).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jade", "Kofi", "Lena"]
_ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stickers", "cards", "shells"]
ANSWER_PATTERN = re.compile(r"The answer is (-?\d+)\.")


def arithmetic_question(rng: random.Random) -> tuple[str, str, int]:
    """One (prompt, completion, answer) triple."""
    kind = rng.choice(["add", "sub", "mul", "word_add", "word_sub"])
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} * {b}?", f"{a} * {b} = {a * b}. The answer is {a * b}.", a * b
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if kind in ("sub", "word_sub") and b > a:
        a, b = b, a
    op, result = ("+", a + b) if kind in ("add", "word_add") else ("-", a - b)
    if kind.startswith("word"):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        verb = f"gets {b} more" if op == "+" else f"gives away {b}"
        prompt = f"{name} has {a} {item} and {verb}. How many {item} does {name} have now?"
    else:
        prompt = f"What is {a} {op} {b}?"
    return prompt, f"{a} {op} {b} = {result}. The answer is {result}.", result


def arithmetic_sft(n_train: int = 2000, n_eval: int = 200, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, evaluation, seen = [], [], set()
    while len(train) < n_train or len(evaluation) < n_eval:
        prompt, completion, answer = arithmetic_question(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        is_eval = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10 == 0
        target = evaluation if is_eval else train
        limit = n_eval if is_eval else n_train
        if len(target) < limit:
            target.append({"prompt": prompt, "completion": completion, "answer": answer})
    return train, evaluation


def parse_answer(text: str) -> int | None:
    """The N in the first "The answer is N." of a generation, or None."""
    match = ANSWER_PATTERN.search(text)
    return int(match[1]) if match else None


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the shipped SFT data (seeded: same output every time).")
    parser.add_argument("--out", default="data/sft")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, evaluation = arithmetic_sft(seed=args.seed)
    write_jsonl(train, Path(args.out) / "arithmetic_train.jsonl")
    write_jsonl(evaluation, Path(args.out) / "arithmetic_eval.jsonl")
    print(f"wrote {len(train)} train and {len(evaluation)} eval rows to {args.out}")


if __name__ == "__main__":
    main()
