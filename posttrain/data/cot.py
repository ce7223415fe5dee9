"""Chain-of-thought and direct-answer SFT data of the same problems (Wei et al. 2022; Nye et al. 2021).

Each word problem (``posttrain.tasks.word_problems``) carries its worked solution, one equation per step. From the
same problems we write two datasets:

    cot:    prompt "<question> Think step by step, then give the final answer as 'The answer is N.'"
            completion "7 * 3 = 21. 21 + 5 = 26. The answer is 26."
    direct: prompt "<question> Give only the final answer as 'The answer is N.'"
            completion "The answer is 26."

so that the two SFT runs see the same questions and answers and differ only in the written steps. Rows keep
``answer`` and ``steps`` (the number of equations) for accuracy by number of steps. Likewise long addition
(``posttrain.tasks.addition``): a column-by-column scratchpad with the carries, or the answer alone; rows keep
``answer`` and ``digits``. Every prompt is the task's own (``task.prompt``), so GRPO on the task (with the same
options) continues from an SFT checkpoint on the prompts it was trained on. Train and held-out problems never
overlap (the task's split rule).

Regenerate all of data/cot/ with ``python -m posttrain.data.cot`` (seeded: the same files every time):

    word_problems_{cot,direct}_{train,eval}.jsonl   the templates, 2-3 steps
    multistep_{cot,direct}_{train,eval}.jsonl       chained stories of 2-6 steps, balanced (task option num_steps)
    addition_{scratchpad,direct}_{train,eval}.jsonl 4- and 5-digit sums, balanced (task long_addition)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.data.synthetic import write_jsonl
from posttrain.tasks.addition import LongAdditionTask
from posttrain.tasks.arithmetic import DIRECT_INSTRUCTION
from posttrain.tasks.word_problems import WordProblemsTask

MULTISTEP = (2, 3, 4, 5, 6)
ADDITION_DIGITS = (4, 5)

__all__ = ["ADDITION_DIGITS", "DIRECT_INSTRUCTION", "MULTISTEP", "addition_rows", "cot_rows", "main"]


def cot_rows(split: str, n: int, seed: int = 0, num_steps: tuple | None = None) -> tuple[list[dict], list[dict]]:
    """``(cot, direct)`` rows of the same ``n`` word problems of ``split`` (``num_steps``: the task's option)."""
    cot, direct = [], []
    task, direct_task = WordProblemsTask(num_steps=num_steps), WordProblemsTask(format="direct")
    for problem in task.problems(split, n, seed):
        question, steps = problem.meta["key"], problem.meta["steps"]
        common = {"answer": int(problem.answer), "steps": len(steps)}
        cot.append({"prompt": problem.prompt, "completion": problem.meta["solution"], **common})
        direct.append({"prompt": direct_task.prompt(question), "completion": f"The answer is {problem.answer}.",
                       **common})
    return cot, direct


def addition_rows(split: str, n: int, seed: int = 0, digits: tuple = ADDITION_DIGITS) -> tuple[list[dict], list[dict]]:
    """``(scratchpad, direct)`` rows of the same ``n`` sums of ``split``."""
    rows = {}
    for form in ("scratchpad", "direct"):
        rows[form] = [{"prompt": p.prompt, "completion": p.meta["solution"], "answer": int(p.answer),
                       "digits": p.meta["digits"]}
                      for p in LongAdditionTask(digits=digits, format=form).problems(split, n, seed)]
    return rows["scratchpad"], rows["direct"]


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the shipped CoT / scratchpad / direct-answer data "
                                                 "(seeded).")
    parser.add_argument("--out", default="data/cot")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    for split, n in (("train", args.n_train), ("eval", args.n_eval)):
        for prefix, (first, second), rows in (
            ("word_problems", ("cot", "direct"), cot_rows(split, n, args.seed)),
            ("multistep", ("cot", "direct"), cot_rows(split, n, args.seed, MULTISTEP)),
            ("addition", ("scratchpad", "direct"), addition_rows(split, n, args.seed)),
        ):
            write_jsonl(rows[0], out / f"{prefix}_{first}_{split}.jsonl")
            write_jsonl(rows[1], out / f"{prefix}_{second}_{split}.jsonl")
            print(f"{split}: wrote {len(rows[0])} {first} and {len(rows[1])} {second} rows to {out}/{prefix}_*")


if __name__ == "__main__":
    main()
