"""Held-out greedy accuracy on two-digit arithmetic, split by operation, for one or more models; and pass@k on the
held-out subtractions (how often k samples at temperature 1 contain the right answer: whether GRPO can find a signal).

Uses the task and checker GRPO trains with (``posttrain/tasks/arithmetic.py``), 200 held-out problems per seed, at
most 64 new tokens, the rollout engine.

    python benchmarks/arithmetic_by_operation.py smollm2-135m-instruct runs/grpo_b8c/checkpoints/step_100 --seeds 0,1
    python benchmarks/arithmetic_by_operation.py runs/grpo_g8p/checkpoints/step_150 --pass-at 8
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from posttrain.models import load_model
from posttrain.rollout import SamplingParams, chat_prompts, sample
from posttrain.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model names or checkpoint directories")
    parser.add_argument("--seeds", default="0", help="held-out sets (the GRPO config's seed), comma-separated")
    parser.add_argument("--pass-at", type=int, default=0, help="k for pass@k on the first 48 held-out subtractions")
    args = parser.parse_args()
    task = get_task("arithmetic", digits=2, operations="+-")
    seeds = [int(s) for s in args.seeds.split(",")]
    for spec in args.models:
        model, tokenizer = load_model(spec, "float32", "cpu")[:2]
        for seed in seeds:
            problems = task.problems("eval", 200, seed=seed)
            prompt_ids = chat_prompts(tokenizer, [p.prompt for p in problems])
            greedy = sample(model, tokenizer, prompt_ids, SamplingParams(max_new_tokens=64, temperature=0.0),
                            batch_size=16)
            correct = defaultdict(list)
            for problem, text in zip(problems, greedy.texts):
                correct[problem.meta["op"]].append(task.is_correct(problem, text))
            parts = ", ".join(f"'{op}' {sum(v) / len(v):.3f} of {len(v)}" for op, v in sorted(correct.items()))
            total = sum(sum(v) for v in correct.values()) / len(problems)
            print(f"{spec}, held-out seed {seed}: {parts}; all {total:.3f}", flush=True)
            if args.pass_at and seed == seeds[0]:
                k = args.pass_at
                chosen = [i for i, p in enumerate(problems) if p.meta["op"] == "-"][:48]
                drawn = sample(model, tokenizer, [prompt_ids[i] for i in chosen],
                               SamplingParams(max_new_tokens=64, temperature=1.0, seed=1), group_size=k, batch_size=64)
                hits = [[task.is_correct(problems[i], drawn.texts[j * k + g]) for g in range(k)]
                        for j, i in enumerate(chosen)]
                distinct = sum(len(set(drawn.texts[j * k:(j + 1) * k])) for j in range(len(chosen))) / len(chosen)
                print(f"{spec}: subtraction pass@{k} {sum(map(any, hits)) / len(hits):.3f}, mean accuracy of a sample "
                      f"{sum(map(sum, hits)) / (k * len(hits)):.3f}, distinct completions per {k}: {distinct:.2f}")


if __name__ == "__main__":
    main()
