"""Our DPO against TRL's DPOTrainer on identical pairs and settings, full fine-tuning and LoRA, in one invocation.

SmolLM2-135M-Instruct (the embedded default), fp32, CPU, sigmoid loss, beta 0.1, batch 4 pairs, max prompt 64, max
completion 128 (max length 192), AdamW lr 1e-6 constant, clipping at 1.0, no gradient checkpointing on either side
(TRL's own default turns it on; ``trl-*-gc`` variants run that default). LoRA: r 16, alpha 32, dropout 0, every
linear layer of the decoder; the reference is the base with adapters off on both sides. Full fine-tuning: a frozen
copy of the initial model as the reference on both sides.

Each run is a fresh subprocess (so peak RSS is its own); runs alternate ours-full, trl-full, ours-lora, trl-lora, ...
and we report medians. Per run: tokens/s over steps 2..N (step 1 warms up allocators and kernels), peak RSS, minor
page faults and system CPU time (the kernel zero-filling freshly faulted pages), and the DPO loss on the same first 4
pairs as each library computes it before training: ln 2 = 0.693147 for both (policy == reference), within 1e-3.

Tokens are counted once per pair: prompt + chosen + rejected (non-pad), although the prompt goes through the model
twice (once before each completion) and, for the reference, twice more. Both libraries are counted the same way, from
the token ids of the pairs each optimizer step consumed.

Both libraries train on the same batches in the same order: our engine's length-bucketed plan (pairs of similar
length share a step), which TRL consumes sequentially. Our collate packs each step's pairs into a few rows
without padding, each pair's prompt once with its two completions as branches under a 4D mask (``pack_pairs``,
default on); TRL pads every sequence to the step's longest and runs each prompt twice.

Data: generated counting pairs (conversational, so both libraries apply the chat template to the prompt and end the
completion with the template's end-of-turn): prompts of ~40 tokens, completions of ~10 to ~126 tokens, so nothing is
truncated by either library and the token ids of every pair are identical (checked on the first 4 pairs).

    python benchmarks/dpo_vs_trl.py --steps 8 --repeats 3        (needs: scripts/setup.sh benchmarks,embedded)

Extra variants: *-pre (ours: ``precompute_ref_logps: true``; TRL: ``precompute_ref_log_probs=True``): reference
log-probs computed once over the whole dataset before training, no reference model during training; the
precomputation is timed on its own, not in tokens/s. ours-*-mb2: the 4 pairs as 2 micro-batches of 2
(``batch_size: 2, grad_accum_steps: 2``, same update). *-noclip: ``max_grad_norm`` 0 (no clipping) on either side.
ours-*-obwd: ``optimizer_in_backward: true`` (each parameter stepped inside backward and its gradient freed, which
rules out clipping by the global norm: compare it with trl-*-noclip). Every ours variant is compared with every TRL
variant of the same kind (full or LoRA) in the invocation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

from harness import median as harness_median
from harness import report, run_interleaved

BATCH, MAX_PROMPT, MAX_COMPLETION, LR, BETA = 4, 64, 128, 1e-6, 0.1
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


def benchmark_rows(n: int = 400, seed: int = 0) -> list[dict]:
    """Counting tasks as preference pairs: the chosen answer counts correctly, the rejected one skips a number or
    stops early. Completions range from ~10 to ~126 tokens (SmolLM2 tokenizes digits one by one), within 128."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start, count = rng.randint(1, 500), rng.choice([2, 4, 8, 12, 16, 20, 24])
        numbers = [str(start + i) for i in range(count)]
        if rng.random() < 0.5:  # skip one number (about as long as chosen)
            skip = rng.randrange(1, count)
            wrong = numbers[:skip] + [str(start + i) for i in range(skip + 1, count + 1)]
        else:  # stop early
            wrong = numbers[: max(1, count // 2)]
        prompt = [{"role": "user", "content": f"Count up from {start}, {count} numbers, separated by commas."}]
        rows.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": ", ".join(numbers) + "."}],
            "rejected": [{"role": "assistant", "content": ", ".join(wrong) + "."}],
        })
    return rows


def pair_tokens(prompt_ids, chosen_ids, rejected_ids) -> int:
    """Each pair's tokens counted once: prompt + chosen + rejected."""
    return len(prompt_ids) + len(chosen_ids) + len(rejected_ids)


def ids_digest(pairs) -> str:
    return hashlib.sha256(json.dumps([list(map(list, p)) for p in pairs]).encode()).hexdigest()[:16]


def run_ours(data: Path, steps: int, out_dir: Path, lora: bool, precompute: bool, micro_batches: int,
             clip: bool = True, in_backward: bool = False, gradient_checkpointing: bool = False) -> dict:
    import torch

    from posttrain.api import build_method_config
    from posttrain.engine import Engine
    from posttrain.trainers.common import load_policy
    from posttrain.data import load_examples
    from posttrain.trainers.dpo import PreferenceMethod
    from posttrain.trainers.reference import ReferencePolicy, precompute_reference_logps

    _, config = build_method_config({
        "method": "dpo", "model": "smollm2-135m-instruct", "dtype": "float32", "precision": "fp32",
        "loss_type": "sigmoid", "beta": BETA, "output_dir": str(out_dir), "max_steps": steps,
        "batch_size": BATCH // micro_batches, "grad_accum_steps": micro_batches, "learning_rate": LR,
        "lr_schedule": "constant", "logging_steps": 1, "eval_on_start": False, "progress_bar": False,
        "max_grad_norm": 1.0 if clip else 0.0, "optimizer_in_backward": in_backward, "precompute_ref_logps": precompute,
        "gradient_checkpointing": gradient_checkpointing, "ref_cache_dir": str(out_dir.parent / "ref_cache"),
        "lora": {"enabled": lora, **LORA},
        "data": {"path": str(data), "max_length": MAX_PROMPT + MAX_COMPLETION, "max_prompt_length": MAX_PROMPT,
                 "max_completion_length": MAX_COMPLETION},
    })
    model, tokenizer = load_policy(config)
    examples, _ = load_examples(config.data, tokenizer, "pairs")
    first = examples[:BATCH]
    reference = None
    precompute_s = None
    if precompute:  # before any update the policy is the reference
        started = time.perf_counter()
        precompute_reference_logps(model, examples, tokenizer.pad_token_id, config.eval_batch_size,
                                   {"dtype": "torch.float32"}, out_dir.parent / "ref_cache")
        precompute_s = time.perf_counter() - started
    else:
        reference = ReferencePolicy(model)
    method = PreferenceMethod(config, reference)
    batch = method.collate(first, tokenizer.pad_token_id)
    with torch.no_grad():
        first_loss = float(method.loss(model, batch).loss_sum) / method.count(batch)

    counted = [0]
    collate = method.collate

    def counting_collate(items, pad_token_id):
        counted[0] += sum(pair_tokens(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in items)
        return collate(items, pad_token_id)

    method.collate = counting_collate  # the engine takes the method's collate
    step_tokens, step_ends = [], []

    def on_step(engine, state):
        step_ends.append(time.perf_counter())
        step_tokens.append(counted[0] - sum(step_tokens))

    engine = Engine(config, model, method, examples, None, tokenizer.pad_token_id, save_model=lambda d: None,
                    callbacks=[on_step])
    engine.train()
    return {
        "first_loss": first_loss, "tokens": sum(step_tokens[1:steps]), "seconds": step_ends[-1] - step_ends[0],
        "step_tokens": step_tokens, "first_batch_tokens": sum(pair_tokens(e.prompt_ids, e.chosen_ids, e.rejected_ids)
                                                               for e in first),
        "first_batch_ids": ids_digest((e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in first),
        "truncated": 0,  # load_examples logs truncation; benchmark_rows stays within the limits
        "precompute_s": precompute_s,
        "dataset_tokens": sum(pair_tokens(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in examples),
    }


def run_trl(data: Path, steps: int, out_dir: Path, lora: bool, gradient_checkpointing: bool, precompute: bool,
            clip: bool = True) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from posttrain.models.specs import embedded_cache_dir

    path = str(embedded_cache_dir())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = datasets.load_dataset("json", data_files=str(data), split="train")
    args = DPOConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
        lr_scheduler_type="constant", beta=BETA, loss_type=["sigmoid"], max_length=MAX_PROMPT + MAX_COMPLETION,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=gradient_checkpointing,
        precompute_ref_log_probs=precompute, logging_steps=1, save_strategy="no", report_to="none",
        max_grad_norm=1.0 if clip else 0.0,
        seed=0, dataloader_num_workers=0, train_sampling_strategy="sequential",
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    precompute_s = []
    precompute_ref_logps = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *args, **kwargs):  # TRL runs it inside DPOTrainer(...), over the whole dataset
        started = time.perf_counter()
        out = precompute_ref_logps(self, *args, **kwargs)
        precompute_s.append(time.perf_counter() - started)
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)

    first = [trainer.train_dataset[i] for i in range(BATCH)]
    too_long = sum(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > args.max_length
                   or len(r["prompt_ids"]) > MAX_PROMPT for r in trainer.train_dataset)
    batch = trainer.data_collator(first)
    with torch.no_grad():
        first_loss = float(trainer.compute_loss(trainer.model, batch))

    # the same optimizer-step batches as ours: our engine's length-bucketed plan (seed 0, epoch 0), consumed in order
    from posttrain.data.batching import step_batches

    lengths = [2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset]
    order = [i for step in step_batches(lengths, BATCH, 0, 0, True, 16) for i in step]
    trainer.train_dataset = trainer.train_dataset.select(order)

    batch_tokens, step_ends = [], []
    collator = trainer.data_collator

    def counting_collator(features):
        batch_tokens.append(sum(pair_tokens(f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]) for f in features))
        return collator(features)

    trainer.data_collator = counting_collator

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    trainer.add_callback(StepTimes())
    trainer.train()
    # step k (1-based) consumed batch k (the dataloader may fetch one batch ahead); time it from the end of step k-1
    return {
        "first_loss": first_loss, "tokens": sum(batch_tokens[1:steps]), "seconds": step_ends[-1] - step_ends[0],
        "step_tokens": batch_tokens[:steps],
        "first_batch_tokens": sum(pair_tokens(f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]) for f in first),
        "first_batch_ids": ids_digest((f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]) for f in first),
        "truncated": too_long,
        "precompute_s": sum(precompute_s) if precompute else None,
        "dataset_tokens": sum(pair_tokens(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"])
                              for r in trainer.train_dataset),
    }


def worker(which: str, data: Path, steps: int) -> None:
    """which: ours-full, ours-lora, trl-full, trl-lora, with suffixes -pre (precomputed reference log-probs),
    -mb2 (ours: 2 micro-batches of 2 pairs), -gc (gradient checkpointing; TRL's default), -noclip (no gradient
    clipping), -obwd (ours: optimizer_in_backward, which implies no clipping)."""
    parts = which.split("-")
    lora = parts[1] == "lora"
    with tempfile.TemporaryDirectory() as tmp:
        if parts[0] == "trl":
            result = run_trl(data, steps, Path(tmp) / "run", lora, "gc" in parts, "pre" in parts,
                             clip="noclip" not in parts)
        else:
            result = run_ours(data, steps, Path(tmp) / "run", lora, "pre" in parts, 2 if "mb2" in parts else 1,
                              clip="noclip" not in parts and "obwd" not in parts, in_backward="obwd" in parts,
                              gradient_checkpointing="gc" in parts)
    report(result)


TARGETS = {"full": (2.0, 0.6), "lora": (1.5, 0.6)}  # (min speed-up, max share of TRL's peak RSS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help="internal: run one configuration in this process")
    parser.add_argument("--variants", default="ours-full,trl-full,ours-lora,trl-lora",
                        help="comma-separated: {ours,trl}-{full,lora}, *-pre, *-noclip, *-gc, ours-*-mb2, ours-*-obwd")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.data), args.steps)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in benchmark_rows()))
        variants = args.variants.split(",")
        results = run_interleaved(__file__, variants, data, args.steps, args.repeats,
                                  describe=lambda r: f", tokens per step {r['step_tokens']}")

    def median(which, key):
        return harness_median(results, which, key)

    print(f"\nmedians over {args.repeats} runs each, {args.steps} steps (steps 2..{args.steps} timed), batch {BATCH} "
          f"pairs, max prompt {MAX_PROMPT}, max completion {MAX_COMPLETION}, fp32, {os.cpu_count()} CPUs; tokens "
          "counted once per pair (prompt + chosen + rejected)")
    print(f"{'':>14}{'tok/s':>9}{'peak RSS GB':>13}{'first loss':>12}{'sys s':>8}{'minor faults':>14}"
          f"{'1st batch tok':>15}{'ids':>18}")
    for which in variants:
        first = results[which][0]
        print(f"{which:>14}{median(which, 'tokens_per_s'):>9.1f}{median(which, 'peak_rss_gb'):>13.2f}"
              f"{median(which, 'first_loss'):>12.6f}{median(which, 'system_s'):>8.1f}"
              f"{median(which, 'minor_faults'):>14.0f}{first['first_batch_tokens']:>15}{first['first_batch_ids']:>18}")
    for which in variants:
        for r in results[which]:
            if abs(r["first_loss"] - math.log(2)) >= 1e-3:
                print(f"FAIL {which}: first-step loss {r['first_loss']:.6f} is not ln 2 within 1e-3")
            if r.get("truncated"):
                print(f"NOTE {which}: {r['truncated']} pairs exceed the length limits")
    for which in variants:
        if results[which][0].get("precompute_s") is not None:
            seconds = median(which, "precompute_s")
            print(f"{which}: reference log-probs of all {results[which][0]['dataset_tokens']} pair tokens precomputed "
                  f"in {seconds:.0f} s ({results[which][0]['dataset_tokens'] / seconds:.0f} tok/s), not in tok/s above")
    for which, trl in ((v, t) for v in variants if v.startswith("ours") for t in variants
                       if t.startswith("trl") and t.split("-")[1] == v.split("-")[1]):
        kind = which.split("-")[1]
        speedup = median(which, "tokens_per_s") / median(trl, "tokens_per_s")
        memory = median(which, "peak_rss_gb") / median(trl, "peak_rss_gb")
        loss_gap = abs(results[which][0]["first_loss"] - results[trl][0]["first_loss"])
        same_ids = results[which][0]["first_batch_ids"] == results[trl][0]["first_batch_ids"]
        min_speed, max_memory = TARGETS[kind]
        met = speedup >= min_speed and memory <= max_memory and loss_gap < 1e-3
        print(f"{which} vs {trl}: speed {speedup:.2f}x (target >= {min_speed}x), peak memory {memory:.2f} of TRL's "
              f"(target <= {max_memory}), first-step loss gap {loss_gap:.1e} (must be < 1e-3), first-batch token ids "
              f"{'identical' if same_ids else 'DIFFER'}: {'target met' if met else 'target NOT met'}")


if __name__ == "__main__":
    main()
