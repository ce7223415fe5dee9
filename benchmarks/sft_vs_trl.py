"""Our SFT against TRL's SFTTrainer on identical data and settings, in one invocation.

SmolLM2-135M-Instruct (the embedded default), full fine-tuning, fp32, batch 8, max length 256, CPU. Each run is a
fresh subprocess (so peak RSS is its own), runs alternate ours, TRL, ours, TRL, ... and we report medians.

Per run: non-pad tokens/s over steps 2..N (step 1 warms up allocators and kernels), peak RSS, minor page faults and
system CPU time (the kernel zero-filling freshly faulted pages), and the loss on the same first batch (8 rows) as
each library computes it: they must agree within 1e-3.

    python benchmarks/sft_vs_trl.py --steps 12 --repeats 3        (needs: scripts/setup.sh benchmarks,embedded)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from harness import median as harness_median
from harness import report, run_interleaved

BATCH, MAX_LENGTH, LR = 8, 256, 1e-5


def benchmark_rows(n: int = 400, seed: int = 0) -> list[dict]:
    """Prompt/completion pairs whose completions range from a few to ~200 tokens (counting tasks), so padding and
    length handling matter as they do in real SFT data."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start, count = rng.randint(1, 500), rng.choice([3, 5, 10, 20, 40, 60, 80])
        numbers = ", ".join(str(start + i) for i in range(count))
        prompt = [{"role": "user", "content": f"Count up from {start}, {count} numbers, separated by commas."}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": numbers + "."}]})
    return rows


def run_ours(data: Path, steps: int, out_dir: Path, micro_batches: int = 1, checkpointing: bool = False) -> dict:
    import torch

    from posttrain.api import build_method_config
    from posttrain.data import collate, load_examples
    from posttrain.engine import Engine
    from posttrain.models import load_model
    from posttrain.trainers.sft import SFTMethod

    train_function, config = build_method_config({
        "method": "sft", "model": "smollm2-135m-instruct", "dtype": "float32", "precision": "fp32",
        "output_dir": str(out_dir), "max_steps": steps, "batch_size": BATCH // micro_batches,
        "grad_accum_steps": micro_batches, "gradient_checkpointing": checkpointing, "learning_rate": LR,
        "lr_schedule": "constant", "logging_steps": 1, "eval_on_start": False, "progress_bar": False,
        "max_grad_norm": 1.0, "data": {"path": str(data), "max_length": MAX_LENGTH},
    })
    model, tokenizer = load_model(config.model, "float32")
    examples, _ = load_examples(config.data, tokenizer, "sft")
    batch = collate(examples[:BATCH], tokenizer.pad_token_id)
    method = SFTMethod()
    with torch.no_grad():
        first_loss = float(method.loss(model, batch).loss_sum) / method.count(batch)
    engine = Engine(config, model, method, examples, None, tokenizer.pad_token_id, save_model=lambda d: None)
    engine.train()
    log = [json.loads(line) for line in (out_dir / "log_history.jsonl").read_text().splitlines()]
    timed = [r for r in log if r["step"] >= 2]
    tokens = sum(r["num_tokens"] for r in timed)
    seconds = sum(r["num_tokens"] / r["tokens_per_s"] for r in timed)
    return {"first_loss": first_loss, "tokens": tokens, "seconds": seconds}


def run_trl(data: Path, steps: int, out_dir: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from posttrain.models.specs import embedded_cache_dir

    path = str(embedded_cache_dir())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = datasets.load_dataset("json", data_files=str(data), split="train")
    args = SFTConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
        lr_scheduler_type="constant", max_length=MAX_LENGTH, bf16=False, fp16=False, use_cpu=True,
        logging_steps=1, save_strategy="no", report_to="none", max_grad_norm=1.0, seed=0,
        completion_only_loss=True, dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    with torch.no_grad():
        first_loss = float(trainer.compute_loss(model, batch))

    token_counts, step_ends = [], []
    collator = trainer.data_collator

    def counting_collator(features):
        out = collator(features)
        token_counts.append(int(out["attention_mask"].sum()))
        return out

    trainer.data_collator = counting_collator

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    trainer.add_callback(StepTimes())
    trainer.train()
    # step k (1-based) consumed batch k; time it from the end of step k-1
    tokens = sum(token_counts[1:steps])
    seconds = step_ends[-1] - step_ends[0]
    return {"first_loss": first_loss, "tokens": tokens, "seconds": seconds}


def worker(which: str, data: Path, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if which == "trl":
            result = run_trl(data, steps, Path(tmp) / "run")
        else:  # "ours", "ours-mbK", "ours-mbK-gc": the batch of 8 as K micro-batches of 8/K (exact accumulation,
            # same step), "-gc" with gradient checkpointing
            parts = which.split("-")
            micro = next((int(p[2:]) for p in parts if p.startswith("mb")), 1)
            result = run_ours(data, steps, Path(tmp) / "run", micro, "gc" in parts)
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help="internal: run one configuration in this process")
    parser.add_argument("--variants", default="ours,ours-mb4,trl",
                        help="comma-separated: ours (one micro-batch of 8), ours-mbK (K micro-batches of 8/K), "
                             "ours-mbK-gc (the same with gradient checkpointing), trl")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.data), args.steps)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bench.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in benchmark_rows()))
        variants = args.variants.split(",")
        results = run_interleaved(__file__, variants, data, args.steps, args.repeats)

    def median(which, key):
        return harness_median(results, which, key)

    print(f"\nmedians over {args.repeats} runs each, {args.steps} steps (steps 2..{args.steps} timed), batch {BATCH}, "
          f"max length {MAX_LENGTH}, fp32, {os.cpu_count()} CPUs")
    print(f"{'':>12}{'tok/s':>10}{'peak RSS GB':>14}{'first loss':>12}{'sys s':>8}{'minor faults':>14}")
    for which in variants:
        print(f"{which:>12}{median(which, 'tokens_per_s'):>10.1f}{median(which, 'peak_rss_gb'):>14.2f}"
              f"{median(which, 'first_loss'):>12.5f}{median(which, 'system_s'):>8.1f}{median(which, 'minor_faults'):>14.0f}")
    for which in (v for v in variants if v != "trl"):
        speedup = median(which, "tokens_per_s") / median("trl", "tokens_per_s")
        memory = median(which, "peak_rss_gb") / median("trl", "peak_rss_gb")
        loss_gap = abs(results[which][0]["first_loss"] - results["trl"][0]["first_loss"])
        print(f"{which}: speed vs TRL {speedup:.2f}x (target >= 1.5x); peak memory vs TRL {memory:.2f} "
              f"(target <= 0.5); first-step loss gap {loss_gap:.2e} (must be < 1e-3)")


if __name__ == "__main__":
    main()
