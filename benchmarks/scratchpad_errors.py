"""Where scratchpad answers go wrong: reads an evaluation's samples of the `long_addition` task (format scratchpad)
and sorts every greedy answer into one of

    correct             the final answer is the sum
    columns right, end wrong
                        every column line of the true sum is written and right (posttrain.tasks.addition's check),
                        yet the answer is wrong: the scratchpad went on past the last column, or left out the
                        final carry
    a column wrong      some column line of the true sum is missing or wrong

by number of digits, so a low accuracy can be read as "cannot add" or "cannot stop".

    python benchmarks/scratchpad_errors.py runs/scratchpad/sft_scratchpad/final/evaluation_samples.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict

from posttrain.tasks.addition import check_scratchpad, columns

_QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
KINDS = ("correct", "columns right, end wrong", "a column wrong")


def kind_of(sample: dict, a: int, b: int) -> str:
    if sample["correct"]:
        return KINDS[0]
    needed = len(columns(a, b))
    right_prefix, _ = check_scratchpad(a, b, "\n".join(sample["output"].splitlines()[:needed]))
    return KINDS[1] if right_prefix == needed else KINDS[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="+", help="evaluation_samples.jsonl files of a long_addition suite")
    args = parser.parse_args()
    print("| samples | digits | n | " + " | ".join(KINDS) + " | column lines past the last |")
    print("|---|---|---|" + "---|" * (len(KINDS) + 1))
    for path in args.samples:
        by_digits: dict[int, Counter] = defaultdict(Counter)
        extra: dict[int, int] = defaultdict(int)
        with open(path) as lines:
            for row in map(json.loads, lines):
                question = _QUESTION.search(row["prompt"])
                if "digits" not in row or not question:
                    continue
                a, b = map(int, question.groups())
                by_digits[row["digits"]][kind_of(row, a, b)] += 1
                extra[row["digits"]] += check_scratchpad(a, b, row["output"])[1] > len(columns(a, b))
        for digits, counts in sorted(by_digits.items()):
            n = sum(counts.values())
            print(f"| {path} | {digits} | {n} | " + " | ".join(f"{counts[k] / n:.3f}" for k in KINDS)
                  + f" | {extra[digits] / n:.3f} |")


if __name__ == "__main__":
    main()
