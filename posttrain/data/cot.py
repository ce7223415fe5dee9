"""Chain-of-thought and direct-answer SFT data of the same word problems (Wei et al. 2022; Nye et al. 2021).

Each word problem (``posttrain.tasks.word_problems``) carries its worked solution, one equation per step. From the
same problems we write two datasets:

    cot:    prompt "<question> Think step by step, then give the final answer as 'The answer is N.'"
            completion "7 * 3 = 21. 21 + 5 = 26. The answer is 26."
    direct: prompt "<question> Give only the final answer as 'The answer is N.'"
            completion "The answer is 26."

so that the two SFT runs see the same questions and answers and differ only in the written steps. Rows keep
``answer`` and ``steps`` (the number of equations) for accuracy by number of steps. Train and held-out problems never
overlap (the task's split rule). Regenerate with ``python -m posttrain.data.cot`` (written to data/cot/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.data.synthetic import write_jsonl
from posttrain.tasks.word_problems import INSTRUCTION, WordProblemsTask

DIRECT_INSTRUCTION = "Give only the final answer as 'The answer is N.'"


def cot_rows(split: str, n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(cot, direct)`` rows of the same ``n`` problems of ``split``."""
    cot, direct = [], []
    for problem in WordProblemsTask().problems(split, n, seed):
        question, steps = problem.meta["key"], problem.meta["steps"]
        common = {"answer": int(problem.answer), "steps": len(steps)}
        cot.append({"prompt": f"{question} {INSTRUCTION}", "completion": problem.meta["solution"], **common})
        direct.append({"prompt": f"{question} {DIRECT_INSTRUCTION}",
                       "completion": f"The answer is {problem.answer}.", **common})
    return cot, direct


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the shipped CoT / direct-answer data (seeded).")
    parser.add_argument("--out", default="data/cot")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, n in (("train", args.n_train), ("eval", args.n_eval)):
        cot, direct = cot_rows(split, n, args.seed)
        write_jsonl(cot, Path(args.out) / f"word_problems_cot_{split}.jsonl")
        write_jsonl(direct, Path(args.out) / f"word_problems_direct_{split}.jsonl")
        print(f"{split}: wrote {len(cot)} CoT and {len(direct)} direct-answer rows to {args.out}")


if __name__ == "__main__":
    main()
