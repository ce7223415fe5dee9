"""Small seeded datasets the project ships (regenerate with ``python -m posttrain.data.synthetic``).

``arithmetic_preferences``: pairs for the preference methods and reward models. The prompt is a bare two-digit sum or
difference; the chosen answer is concise and correct ("The answer is 65."); the rejected one is verbose (the chatty
padding the embedded model produces), wrong (a near miss, the kind of slip the model makes), or both. So a model that
learns from the pairs answers shorter and in the requested form, which generations show before and after.

``arithmetic_sft``: two-digit arithmetic and one-step word problems, answered concisely with the working and a
fixed final sentence, ``"... The answer is N."``. The embedded model answers these verbosely and often wrongly
(``12 + 7 = 9`` ...), so a short SFT run has something measurable to learn: the answer format, and some accuracy.
Train and eval questions never overlap: the split is decided by the question text with the rule of
`posttrain.tasks` (`split_of`), so no eval question of the `arithmetic` task is in the SFT train data either.
Questions, worked answers and answer parsing come from `posttrain.tasks`, their one home.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from posttrain.tasks.arithmetic import (ArithmeticTask, ANSWER_PATTERN, OPERATIONS, parse_answer, question, sample_operands,
                                        worked_solution)
from posttrain.tasks.base import split_of
from posttrain.tasks.word_problems import one_step_story

__all__ = ["ANSWER_PATTERN", "arithmetic_preferences", "arithmetic_question", "arithmetic_sft", "main", "parse_answer", "write_jsonl"]


def arithmetic_question(rng: random.Random) -> tuple[str, str, int]:
    """One (prompt, completion, answer) triple: a product of 2..12, or a sum or difference of two-digit numbers,
    asked plainly or as a one-step story."""
    kind = rng.choice(["add", "sub", "mul", "word_add", "word_sub"])
    if kind == "mul":
        op, (a, b) = "*", sample_operands(rng, "*", 2, 12)
    else:
        op = "+" if kind.endswith("add") else "-"
        a, b = sample_operands(rng, op, 10, 99)
    prompt = one_step_story(rng, a, op, b) if kind.startswith("word") else question(a, op, b)
    return prompt, worked_solution(a, op, b), OPERATIONS[op](a, b)


def arithmetic_sft(n_train: int = 2000, n_eval: int = 200, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, evaluation, seen = [], [], set()
    while len(train) < n_train or len(evaluation) < n_eval:
        prompt, completion, answer = arithmetic_question(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        is_eval = split_of(prompt) == "eval"
        target = evaluation if is_eval else train
        limit = n_eval if is_eval else n_train
        if len(target) < limit:
            target.append({"prompt": prompt, "completion": completion, "answer": answer})
    return train, evaluation


FILLER_OPENINGS = [
    "Great question! Let me walk you through it step by step.",
    "Sure! Arithmetic like this is something we use every day, so let me explain it carefully.",
    "Of course. To solve this problem, we need to think about what the two numbers mean.",
    "Let me think about this one. It is a simple calculation, but it is worth doing carefully.",
    "Happy to help with this! First, let's look at the numbers in the question.",
]
FILLER_CLOSINGS = [
    "I hope this helps! Let me know if you have any other questions.",
    "Arithmetic becomes easier with practice, so keep it up!",
    "If you want, I can show you another way to check the result.",
    "Feel free to ask if anything about this calculation is unclear.",
]
REJECTED_KINDS = ("verbose", "wrong", "verbose_wrong")


def preference_pair(problem, rng: random.Random) -> dict:
    """One pair for an arithmetic Problem: concise and correct over verbose and/or wrong."""
    answer = int(problem.answer)
    kind = rng.choice(REJECTED_KINDS)
    given = answer if kind == "verbose" else answer + rng.choice([-10, -2, -1, 1, 2, 10])
    rejected = f"The answer is {given}."
    if kind != "wrong":
        a, op, b = problem.meta["a"], problem.meta["op"], problem.meta["b"]
        verb = "add" if op == "+" else "subtract"
        rejected = (f"{rng.choice(FILLER_OPENINGS)} We need to {verb} {b} {'to' if op == '+' else 'from'} {a}. "
                    f"Doing the calculation, {a} {op} {b} gives {given}. So, the answer is {given}. "
                    f"{rng.choice(FILLER_CLOSINGS)}")
    return {"prompt": problem.prompt, "chosen": f"The answer is {answer}.", "rejected": rejected, "kind": kind}


def arithmetic_preferences(n_train: int = 1000, n_eval: int = 200, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and held-out pairs (the questions never overlap: the split rule of posttrain.tasks)."""
    task = ArithmeticTask(digits=2, operations="+-", instruction="")
    rng = random.Random(seed)
    train = [preference_pair(p, rng) for p in task.problems("train", n_train, seed)]
    evaluation = [preference_pair(p, rng) for p in task.problems("eval", n_eval, seed)]
    return train, evaluation


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the shipped SFT data (seeded: same output every time).")
    parser.add_argument("--out", default="data/sft")
    parser.add_argument("--preference-out", default="data/preference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, evaluation = arithmetic_sft(seed=args.seed)
    write_jsonl(train, Path(args.out) / "arithmetic_train.jsonl")
    write_jsonl(evaluation, Path(args.out) / "arithmetic_eval.jsonl")
    print(f"wrote {len(train)} train and {len(evaluation)} eval rows to {args.out}")
    train, evaluation = arithmetic_preferences(seed=args.seed)
    write_jsonl(train, Path(args.preference_out) / "arithmetic_train.jsonl")
    write_jsonl(evaluation, Path(args.preference_out) / "arithmetic_eval.jsonl")
    print(f"wrote {len(train)} train and {len(evaluation)} eval pairs to {args.preference_out}")


if __name__ == "__main__":
    main()
