"""Our GRPO against TRL's GRPOTrainer: step time on identical prompts and reward, in one invocation.

SmolLM2-135M-Instruct (the embedded default, the same HF folder for both), full fine-tuning, fp32, CPU. Each
optimizer step: 4 prompts x 4 completions = 16 completions (TRL: ``per_device_train_batch_size=16`` completions,
``num_generations=4``, ``gradient_accumulation_steps=1`` so ``steps_per_generation=1`` and ``generation_batch_size=16``:
one generation per step, no old-policy forward), at most 64 new tokens, temperature 1.0 (top-p 1, no top-k), stop at
EOS. AdamW lr 1e-5 constant (configs/grpo.yaml), no warmup, no weight decay, clipping at 1.0; beta 0 (no reference
model on either side), mu = 1 (num_iterations), epsilon 0.2, rewards scaled per group, per-sequence loss aggregation
(ours ``loss_aggregation: grpo``, TRL ``loss_type="grpo"``), truncated completions kept in the loss, no gradient
checkpointing (TRL's own default turns it on), no vLLM, logging every step, no evaluation, no checkpoints.

Prompts: two-digit addition and subtraction from our ``arithmetic`` task (train split, seed 0), e.g. "What is 47 -
18? Reply with the final answer as 'The answer is N.'", as a single user message, so both apply the model's chat
template. Both libraries see the same prompts in each step: TRL reads the dataset in order (``shuffle_dataset=False``)
after it is put in our engine's order (``step_batches``, seed 0, epoch 0); the token ids of every step's prompts are
checked to be the same set on both sides (``prompt ids`` below). Reward: our task's checker for both (1 for the exact
answer, partial credit for near misses, 0.1 weight for the requested form), wrapped for TRL as
``reward(prompts, completions, answer, **kwargs)`` with the answer from a dataset column.

Each run is a fresh subprocess (so peak RSS is its own); runs alternate ours, TRL, ours, TRL, ... and we report
medians over runs. Per run: the median step time over steps 2..N (step 1 warms up allocators and kernels), a step
being the time between the ends of consecutive optimizer steps (ours: an engine callback; TRL: a TrainerCallback's
on_step_end), so it holds everything the loop does: generation, rewards, advantages, forward/backward, the
optimizer, per-step logging. Generation: the sampling call alone, timed by wrapping it on both sides (ours:
``posttrain.rollout.sample``; TRL: ``GRPOTrainer._generate_single_turn``, i.e. padding + ``model.generate`` + EOS
masking), and its share of the step time. Completion tokens/s: completion tokens (EOS included, on both sides)
generated in steps 2..N over those steps' time. Peak RSS. The mean reward and the loss of step 1, as each library
logs them: a sanity check that both sample from the same model (rewards close, not equal: the samples differ) and
aggregate per sequence (the step-1 loss of a per-sequence mean with group-centred advantages and ratio 1 is ~0).

    python benchmarks/grpo_vs_trl.py --steps 4 --repeats 3        (needs: scripts/setup.sh benchmarks,embedded)

Differences that remain between the two setups:
- Sampling: each library draws its own random numbers, so the completions (and their lengths) differ. Step time
  depends on completion length (decoding runs until every row has stopped, and training runs over the completions),
  so completion tokens per step are reported beside the step times; compare runs with similar lengths, and read
  completion tokens/s as the length-independent figure.
- Advantages: TRL divides by the group's sample std (Bessel's correction), ours by the population std (the issue's
  definition): TRL's advantages are sqrt(3/4) of ours for groups of 4. No effect on time.
- Prompt tokenization: ours tokenizes all prompts once before training (outside the timed steps); TRL applies the
  chat template to each step's prompts inside the step (a few ms). The token ids are the same (checked).
- Step 1 is not timed on either side (no start mark), so the figures need --steps >= 2.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from harness import median as harness_median
from harness import report, run_interleaved

PROMPTS_PER_STEP, GROUP, MAX_NEW_TOKENS, LR, TEMPERATURE = 4, 4, 64, 1e-5, 1.0
NUM_PROMPTS, SEED = 256, 0
TASK_OPTIONS = {"digits": 2, "operations": "+-"}
TARGET = 0.5  # our step time at most half of TRL's


def benchmark_problems() -> list[dict]:
    """The arithmetic task's first NUM_PROMPTS train problems (seed 0): what our trainer generates for itself."""
    from posttrain.tasks import get_task

    task = get_task("arithmetic", **TASK_OPTIONS)
    return [{"prompt": p.prompt, "answer": p.answer} for p in task.problems("train", NUM_PROMPTS, SEED)]


def prompts_digest(prompt_ids) -> str:
    """The set of distinct prompts a step sampled from (order and repeats ignored)."""
    distinct = sorted({tuple(int(t) for t in ids) for ids in prompt_ids})
    return hashlib.sha256(json.dumps(distinct).encode()).hexdigest()[:12]


def timing_summary(step_ends: list[float], generation_s: list[float], completion_tokens: list[int]) -> dict:
    """Steps 2..N: step k lasts from the end of step k-1 to the end of step k."""
    step_s = [b - a for a, b in itertools.pairwise(step_ends)]
    gen_s, tokens = generation_s[1:len(step_ends)], completion_tokens[1:len(step_ends)]
    return {
        "step_s": step_s, "median_step_s": statistics.median(step_s) if step_s else float("nan"),
        "generation_s": generation_s, "completion_tokens": completion_tokens,
        "median_generation_s": statistics.median(gen_s) if gen_s else float("nan"),
        "generation_share": sum(gen_s) / sum(step_s) if step_s else float("nan"),
        "tokens": sum(tokens), "seconds": sum(step_s) if step_s else float("nan"),
    }


def run_ours(data: Path, steps: int, out_dir: Path) -> dict:
    from posttrain.api import train
    from posttrain.engine.run_log import read_jsonl
    from posttrain.trainers import rl

    sampled = []  # (prompt digest, seconds, completion tokens) per sample() call
    original_sample = rl.sample

    def timed_sample(model, tokenizer, prompt_ids, params, **kwargs):
        started = time.perf_counter()
        rollout = original_sample(model, tokenizer, prompt_ids, params, **kwargs)
        sampled.append((prompts_digest(prompt_ids), time.perf_counter() - started,
                        int(rollout.completion_mask.sum())))
        return rollout

    rl.sample = timed_sample  # num_eval_prompts=0: every call is a training rollout
    step_ends, methods = [], []

    def on_step(engine, state):
        step_ends.append(time.perf_counter())
        methods.append(engine.method)

    train({
        "method": "grpo", "model": "smollm2-135m-instruct", "dtype": "float32", "precision": "fp32",
        "output_dir": str(out_dir), "overwrite_output_dir": True, "seed": SEED,
        "task": "arithmetic", "task_options": TASK_OPTIONS, "num_train_prompts": NUM_PROMPTS, "num_eval_prompts": 0,
        "batch_size": PROMPTS_PER_STEP, "group_size": GROUP, "grad_accum_steps": 1, "max_new_tokens": MAX_NEW_TOKENS,
        "temperature": TEMPERATURE, "top_p": 1.0, "top_k": 0, "scale_rewards": "group", "loss_aggregation": "grpo",
        "epsilon": 0.2, "num_iterations": 1, "beta": 0.0, "mask_truncated_completions": False,
        "max_steps": steps, "learning_rate": LR, "lr_schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "gradient_checkpointing": False, "logging_steps": 1, "eval_on_start": False,
        "save_steps": None, "progress_bar": False,
    }, callbacks=[on_step])
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    problems = methods[0].setup.train_problems
    same_problems = [{"prompt": p.prompt, "answer": p.answer} for p in problems] == rows
    first = next(r for r in read_jsonl(out_dir / "log_history.jsonl") if r.get("step") == 1)
    return {
        **timing_summary(step_ends, [s for _, s, _ in sampled], [n for _, _, n in sampled]),
        "first_loss": first["loss"], "first_reward": first["reward"], "step_prompts": [d for d, _, _ in sampled],
        "same_problems": same_problems,
    }


def run_trl(data: Path, steps: int, out_dir: Path) -> dict:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.data.batching import step_batches
    from posttrain.models.specs import embedded_cache_dir
    from posttrain.rollout import chat_prompts
    from posttrain.tasks import Problem, get_task

    path = str(embedded_cache_dir())
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    # our engine's order of the prompts (seed 0, epoch 0, length-bucketed), which TRL then reads sequentially
    tokenizer = AutoTokenizer.from_pretrained(path)
    lengths = [len(ids) for ids in chat_prompts(tokenizer, [r["prompt"] for r in rows])]
    order = [i for batch in step_batches(lengths, PROMPTS_PER_STEP, SEED, 0, True, 16) for i in batch]
    dataset = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": rows[i]["prompt"]}], "answer": rows[i]["answer"]} for i in order])

    task = get_task("arithmetic", **TASK_OPTIONS)

    def arithmetic(prompts, completions, answer, **kwargs):
        """Our task's checker on TRL's conversational completions ([{"role": "assistant", "content": ...}])."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [task.reward(Problem("", a), text) for a, text in zip(answer, texts)]

    args = GRPOConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
        gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=MAX_NEW_TOKENS,
        temperature=TEMPERATURE, top_p=1.0, top_k=0, learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.0, num_iterations=1, epsilon=0.2,
        loss_type="grpo", scale_rewards="group", mask_truncated_completions=False, shuffle_dataset=False,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, use_vllm=False,
        model_init_kwargs={"dtype": "float32"}, logging_steps=1, save_strategy="no", report_to=[], seed=SEED,
        dataloader_num_workers=0, log_completions=False,
    )
    assert args.steps_per_generation == 1 and args.generation_batch_size == PROMPTS_PER_STEP * GROUP
    trainer = GRPOTrainer(model=path, reward_funcs=[arithmetic], args=args, train_dataset=dataset,
                          processing_class=tokenizer)

    sampled = []
    original_generate = trainer._generate_single_turn

    def timed_generate(prompt_ids, *rest, **kwargs):
        started = time.perf_counter()
        completion_ids, logprobs = original_generate(prompt_ids, *rest, **kwargs)
        sampled.append((prompts_digest(prompt_ids), time.perf_counter() - started,
                        sum(len(ids) for ids in completion_ids)))
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate
    step_ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    trainer.add_callback(StepTimes())
    trainer.train()
    first = next(r for r in trainer.state.log_history if r.get("step") == 1 and "loss" in r)
    return {
        **timing_summary(step_ends, [s for _, s, _ in sampled], [n for _, _, n in sampled]),
        "first_loss": first["loss"], "first_reward": first["reward"], "step_prompts": [d for d, _, _ in sampled],
        "same_problems": True,  # read from the file the problems were written to
    }


def worker(which: str, data: Path, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = run_trl if which == "trl" else run_ours
        result = run(data, steps, Path(tmp) / "run")
    report(result)


def describe(r: dict) -> str:
    steps = ", ".join(f"{s:.1f}" for s in r["step_s"])
    gens = ", ".join(f"{s:.1f}" for s in r["generation_s"])
    return (f", step s (2..N) [{steps}], generation s [{gens}], completion tokens per step {r['completion_tokens']}, "
            f"step-1 reward {r['first_reward']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help="internal: run one configuration in this process")
    parser.add_argument("--variants", default="ours,trl", help="comma-separated: ours, trl")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.data), args.steps)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (step 1 is a warm-up and is not timed)")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "problems.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in benchmark_problems()))
        variants = args.variants.split(",")
        results = run_interleaved(__file__, variants, data, args.steps, args.repeats, describe=describe)

    def median(which, key):
        return harness_median(results, which, key)

    print(f"\nmedians over {args.repeats} runs each, {args.steps} steps (steps 2..{args.steps} timed), "
          f"{PROMPTS_PER_STEP} prompts x {GROUP} completions, max {MAX_NEW_TOKENS} new tokens, fp32, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':>6}{'step s':>9}{'gen s':>8}{'gen share':>11}{'compl tok/step':>16}{'compl tok/s':>13}"
          f"{'peak RSS GB':>13}{'step-1 reward':>15}{'step-1 loss':>13}{'step-1 prompt ids':>19}")
    for which in variants:
        first = results[which][0]
        tokens_per_step = statistics.median(n for r in results[which] for n in r["completion_tokens"][1:])
        print(f"{which:>6}{median(which, 'median_step_s'):>9.2f}{median(which, 'median_generation_s'):>8.2f}"
              f"{median(which, 'generation_share'):>11.0%}{tokens_per_step:>16.0f}{median(which, 'tokens_per_s'):>13.1f}"
              f"{median(which, 'peak_rss_gb'):>13.2f}{median(which, 'first_reward'):>15.3f}"
              f"{median(which, 'first_loss'):>13.4f}{first['step_prompts'][0]:>19}")

    for which in variants:
        for r in results[which]:
            if not r["same_problems"]:
                print(f"FAIL {which}: its training problems differ from the benchmark's problem file")
    if "ours" in results and "trl" in results:
        ours, trl = results["ours"][0]["step_prompts"], results["trl"][0]["step_prompts"]
        same_prompts = ours == trl
        if not same_prompts:
            print(f"FAIL: the steps' prompt token ids differ: ours {ours}, TRL {trl}")
        ratio = median("ours", "median_step_s") / median("trl", "median_step_s")
        speed = median("ours", "tokens_per_s") / median("trl", "tokens_per_s")
        met = ratio <= TARGET and same_prompts
        print(f"ours vs trl: step time {ratio:.2f} of TRL's ({1 / ratio:.2f}x faster; target <= {TARGET}), "
              f"completion tokens/s {speed:.2f}x TRL's, step-1 mean reward {median('ours', 'first_reward'):.3f} vs "
              f"{median('trl', 'first_reward'):.3f}, prompts of every step {'identical' if same_prompts else 'DIFFER'}"
              f": {'target met' if met else 'target NOT met'}")


if __name__ == "__main__":
    main()
