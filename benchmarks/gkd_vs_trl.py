"""Our on-policy GKD (``method: gkd``) against TRL's GKDTrainer (``trl.experimental.gkd``) on identical data, models
and settings, in one invocation: trained completion tokens/s and peak RSS.

Models: teacher = SmolLM2-135M-Instruct (the embedded default's cached HF folder), student = that model pruned to 15
layers by block influence (``posttrain.models.pruning.prune_model``, made once into a temp folder before the runs);
both libraries load the same two folders, fp32, CPU, full fine-tuning of the student, the teacher frozen. Tokenizer:
the student folder's (the teacher's is the same). ``GKD_BENCH_MODEL=tiny``: a random 2-layer Llama
(``build_tiny_model``, SmolLM2 tokenizer) as teacher and 1 of its layers kept by block influence as student, for a
quick end-to-end check.

Settings, the same on both sides: batch 8 rows per optimizer step (no accumulation), lmbda 1 (every step on-policy:
completions sampled from the student; TRL draws ``random.random() <= lmbda`` from its own seeded generator and ours
u ~ U(0, 1) seeded by (seed, step), so only lmbda 1 (or 0) gives both the same mix of steps), generalized JSD with
beta 0.5 at loss temperature 1 (TRL's loss always runs at T = 1; its ``temperature`` is the sampling one, ours
``generation_temperature``), sampling temperature 0.9 (top-p 1, no top-k), at most 64 new tokens, stop at EOS
(the model's generation config: <|im_end|>), max length 256 (nothing is truncated), fused AdamW (betas 0.9/0.999,
eps 1e-8) at lr 5e-5 constant, no warmup, no weight decay, clipping at 1.0, no gradient checkpointing (TRL's
SFTConfig default turns it on), dropout off, logging every step, no evaluation, no checkpoints, seed 0. Ours: alpha 1
(no cross-entropy term), divergence jsd, ``teacher_dtype`` float32, no ``teacher_top_k``.

Data: the first 256 rows of data/sft/arithmetic_train.jsonl (prompt/completion strings; TRL gets them as a user and
an assistant message, the format its ChatML collator needs), chat template on both sides. Both read the same rows in
each step: TRL's dataset is put in our engine's order (``step_batches``, seed 0, epoch 0) and read sequentially
(``train_sampling_strategy="sequential"``); the token ids of every step's prompts are checked to be the same set on
both sides (``prompt ids`` below).

First-step loss: off-policy (lmbda 0), on the file's first 8 rows, before training, as each library computes it
(ours: ``GKDMethod.loss`` / completion tokens; TRL: ``GKDTrainer.compute_loss``, batchmean over the label mask); the
token ids and completion masks of that batch are checked to be identical (``batch ids``). The two must agree to 1e-5
relative: same divergence, both T = 1, both divide the summed JSD by the completion tokens.

Each run is a fresh subprocess (its own peak RSS); runs alternate ours, TRL, ours, TRL, ...; medians over runs. Per
run: trained completion tokens (the loss-carrying tokens of the step's sampled batch: completion tokens up to and
including EOS, counted from the batch each loss sees, the same way on both sides) of steps 2..N over those steps'
time (step 1 warms up), a step being the time between the ends of consecutive optimizer steps (ours: an engine
callback; TRL: a TrainerCallback's on_step_end), so it holds generation, both forwards, backward, the optimizer and
logging. Generation: the sampling call alone (ours ``posttrain.rollout.sample`` as gkd.py calls it; TRL
``generate_on_policy_outputs``: ``model.generate`` + EOS masking), and its share of the step time.

    python benchmarks/gkd_vs_trl.py --steps 6 --repeats 3          (needs: scripts/setup.sh benchmarks,embedded)
    GKD_BENCH_MODEL=tiny python benchmarks/gkd_vs_trl.py --steps 3 --repeats 1

Differences that remain between the two setups:
- Sampling: each library draws its own random numbers, so the completions (and their lengths) differ; completion
  tokens per step are printed beside the times, and tokens/s is the length-independent figure.
- Loss normalisation on on-policy steps: TRL's Trainer counts ``num_items_in_batch`` from the data batch's labels
  *before* GKDTrainer.training_step swaps in the sampled completions, so TRL divides the sampled tokens' summed JSD by
  the number of the data's completion tokens (printed per run as "TRL's loss divisor"); ours divides by the sampled
  completion tokens. The gradient's scale differs by that ratio (clipping at 1.0 bounds it); the work per step is the
  same.
- The loss itself: TRL materialises the (batch, time, vocab) logits of both models and the JSD's temporaries; ours
  computes the divergence from the last hidden states in chunks of 256 positions (``chunked_distillation_loss``).
- Padding: TRL pads left (prompt) and right (after EOS) and runs the full padded width; ours re-collates the sampled
  rows right-padded to the longest. RoPE sees the same relative positions either way.
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

MODEL = os.environ.get("GKD_BENCH_MODEL", "smollm2-135m-instruct")  # or "tiny"
THREADS = int(os.environ.get("GKD_BENCH_THREADS", "2"))
BATCH, MAX_NEW_TOKENS, MAX_LENGTH, LR, SEED = 8, 64, 256, 5e-5, 0
LMBDA, BETA, GENERATION_TEMPERATURE = 1.0, 0.5, 0.9
NUM_ROWS = 256  # a multiple of BATCH: every step is full
STUDENT_LAYERS = 1 if MODEL == "tiny" else 15
DATA = Path(__file__).resolve().parents[1] / "data" / "sft" / "arithmetic_train.jsonl"
TARGET_SPEED, TARGET_MEMORY = 2.0, 0.6  # at least 2x TRL's tokens/s at no more than 0.6x its peak RSS


def teacher_dir(folder: Path) -> Path:
    if MODEL == "tiny":
        return folder / "teacher"
    from posttrain.models.loading import model_folder

    return model_folder(MODEL)


def prepare(folder: Path) -> None:
    """The rows, the teacher (tiny: built here) and the student pruned from it, once for all runs."""
    from posttrain.models import build_tiny_model, load_tokenizer
    from posttrain.models.pruning import prune_model

    rows = DATA.read_text().splitlines()[:NUM_ROWS]
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")
    if MODEL == "tiny":
        build_tiny_model(0).save_pretrained(folder / "teacher")
        load_tokenizer("tiny").save_pretrained(folder / "teacher")
    pruned = prune_model(str(teacher_dir(folder)), folder / "student", keep_layers=STUDENT_LAYERS)
    print(f"student: layers {pruned['kept_layers']} of {pruned['layers_before']}, "
          f"{pruned['parameters_after'] / 1e6:.1f} M of {pruned['parameters_before'] / 1e6:.1f} M parameters",
          flush=True)


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:12]


def prompts_digest(prompt_ids) -> str:
    """The set of distinct prompts of a step (order ignored)."""
    return digest(sorted({tuple(int(t) for t in ids) for ids in prompt_ids}))


def our_config(folder: Path, steps: int, out_dir: Path):
    from posttrain.api import build_method_config

    return build_method_config({
        "method": "gkd", "model": str(folder / "student"), "teacher": str(teacher_dir(folder)),
        "dtype": "float32", "precision": "fp32", "teacher_dtype": "float32", "output_dir": str(out_dir),
        "seed": SEED, "lmbda": LMBDA, "seq_kd": False, "divergence": "jsd", "beta": BETA, "alpha": 1.0,
        "temperature": 1.0, "teacher_top_k": 0, "max_new_tokens": MAX_NEW_TOKENS,
        "generation_temperature": GENERATION_TEMPERATURE, "top_p": 1.0,
        "data": {"path": str(folder / "train.jsonl"), "max_length": MAX_LENGTH, "completion_only_loss": True},
        "max_steps": steps, "batch_size": BATCH, "grad_accum_steps": 1, "learning_rate": LR,
        "lr_schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "gradient_checkpointing": False, "logging_steps": 1, "eval_on_start": False, "save_steps": None,
        "progress_bar": False,
    })[1]


def timing_summary(step_ends: list[float], generation_s: list[float], trained_tokens: list[int]) -> dict:
    """Steps 2..N: step k lasts from the end of step k-1 to the end of step k."""
    step_s = [b - a for a, b in itertools.pairwise(step_ends)]
    gen_s, tokens = generation_s[1:len(step_ends)], trained_tokens[1:len(step_ends)]
    return {
        "step_s": step_s, "median_step_s": statistics.median(step_s),
        "generation_s": generation_s, "completion_tokens": trained_tokens,
        "median_generation_s": statistics.median(gen_s), "generation_share": sum(gen_s) / sum(step_s),
        "tokens": sum(tokens), "seconds": sum(step_s),
    }


def run_ours(folder: Path, steps: int, out_dir: Path) -> dict:
    import torch

    from posttrain.data import collate, load_examples
    from posttrain.engine import Engine
    from posttrain.trainers import gkd
    from posttrain.trainers.distill import load_student, load_teacher

    config = our_config(folder, steps, out_dir)
    model, tokenizer, _ = load_student(config)
    teacher = load_teacher(config, model, tokenizer, config.model)
    examples, _ = load_examples(config.data, tokenizer, "sft")
    method = gkd.GKDMethod(teacher, config, tokenizer)

    first = examples[:BATCH]  # the file's first rows, off-policy (the data's completions), before training
    batch = collate(first, tokenizer.pad_token_id)
    with torch.no_grad():
        first_loss = float(method.loss(model, batch).loss_sum) / method.count(batch)
    batch_ids = digest([[list(map(int, e.input_ids)), list(map(int, e.loss_mask))] for e in first])

    sampled, trained, step_prompts, step_ends = [], [], [], []
    original_sample, original_prepare = gkd.sample, method.prepare_step

    def timed_sample(*args, **kwargs):
        started = time.perf_counter()
        rollout = original_sample(*args, **kwargs)
        sampled.append(time.perf_counter() - started)
        return rollout

    def counting_prepare(model, micro_batches, step):
        prompts = [p for b in micro_batches for p in gkd.prompt_ids(b)]
        original_prepare(model, micro_batches, step)
        if model.training:
            step_prompts.append(prompts_digest(prompts))
            trained.append(sum(int(b["loss_mask"][:, 1:].sum()) for b in micro_batches))

    gkd.sample, method.prepare_step = timed_sample, counting_prepare
    engine = Engine(config, model, method, examples, None, tokenizer.pad_token_id, save_model=lambda d: None,
                    callbacks=[lambda engine, state: step_ends.append(time.perf_counter())])
    engine.train()
    return {**timing_summary(step_ends, sampled, trained), "first_loss": first_loss, "batch_ids": batch_ids,
            "step_prompts": step_prompts}


def run_trl(folder: Path, steps: int, out_dir: Path) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from posttrain.data import load_examples
    from posttrain.data.batching import step_batches
    from posttrain.models import load_tokenizer

    ours = our_config(folder, steps, out_dir)
    tokenizer = load_tokenizer(str(folder / "student"))
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    messages = [{"messages": [{"role": "user", "content": r["prompt"]},
                              {"role": "assistant", "content": r["completion"]}]} for r in rows]
    # our engine's plan of epoch 0 (seed, length buckets), which TRL then reads sequentially
    lengths = [len(e) for e in load_examples(ours.data, tokenizer, "sft")[0]]
    order = [i for b in step_batches(lengths, BATCH, SEED, 0, ours.shuffle, ours.bucket_window) for i in b]
    args = GKDConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        lmbda=LMBDA, beta=BETA, temperature=GENERATION_TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS, seq_kd=False,
        max_length=MAX_LENGTH, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        disable_dropout=True, model_init_kwargs={"dtype": "float32"}, teacher_model_init_kwargs={"dtype": "float32"},
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", seed=SEED,
        dataloader_num_workers=0, train_sampling_strategy="sequential",
    )
    trainer = GKDTrainer(model=str(folder / "student"), teacher_model=str(teacher_dir(folder)), args=args,
                         train_dataset=datasets.Dataset.from_list([messages[i] for i in order]),
                         processing_class=tokenizer)

    batch = trainer.data_collator(messages[:BATCH])  # the file's first rows, off-policy, before training
    with torch.no_grad():
        first_loss = float(trainer.compute_loss(trainer.model, batch))
    real, loss = batch["attention_mask"].bool(), batch["labels"] != -100
    batch_ids = digest([[ids[r].tolist(), l[r].int().tolist()] for ids, r, l in zip(batch["input_ids"], real, loss)])

    sampled, trained, divisors, step_prompts, step_ends = [], [], [], [], []
    original_generate, original_loss = trainer.generate_on_policy_outputs, trainer.compute_loss

    def timed_generate(model, inputs, generation_config):
        step_prompts.append(prompts_digest(ids[m.bool()] for ids, m in
                                           zip(inputs["prompts"], inputs["prompt_attention_mask"])))
        started = time.perf_counter()
        out = original_generate(model, inputs, generation_config)
        sampled.append(time.perf_counter() - started)
        return out

    def counting_loss(model, inputs, *rest, **kwargs):
        if model.training:
            trained.append(int((inputs["labels"][:, 1:] != -100).sum()))
            divisors.append(int(kwargs.get("num_items_in_batch") or 0))  # counted on the data batch, before sampling
        return original_loss(model, inputs, *rest, **kwargs)

    trainer.generate_on_policy_outputs, trainer.compute_loss = timed_generate, counting_loss

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    trainer.add_callback(StepTimes())
    trainer.train()
    return {**timing_summary(step_ends, sampled, trained), "first_loss": first_loss, "batch_ids": batch_ids,
            "step_prompts": step_prompts, "loss_divisors": divisors}


def worker(which: str, folder: Path, steps: int) -> None:
    import torch

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_trl if which == "trl" else run_ours)(folder, steps, Path(tmp) / "run")
    report(result)


def describe(r: dict) -> str:
    steps = ", ".join(f"{s:.1f}" for s in r["step_s"])
    gens = ", ".join(f"{s:.1f}" for s in r["generation_s"])
    return (f", step s (2..N) [{steps}], generation s [{gens}], "
            f"trained completion tokens per step {r['completion_tokens']}"
            + (f", TRL's loss divisor per step {r['loss_divisors']}" if "loss_divisors" in r else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help="internal: run one configuration in this process")
    parser.add_argument("--variants", default="ours,trl", help="comma-separated: ours, trl")
    parser.add_argument("--data", help="internal: the folder with the rows and models")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.data), args.steps)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (step 1 is a warm-up and is not timed)")
    if args.steps > NUM_ROWS // BATCH:
        parser.error(f"--steps must be <= {NUM_ROWS // BATCH} (one epoch: both read the same plan of epoch 0)")

    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp))
        variants = args.variants.split(",")
        results = run_interleaved(__file__, variants, Path(tmp), args.steps, args.repeats, describe=describe)

    def median(which, key):
        return harness_median(results, which, key)

    print(f"\nmodel {MODEL} (student: {STUDENT_LAYERS} layers), medians over {args.repeats} runs each, {args.steps} "
          f"steps (steps 2..{args.steps} timed), batch {BATCH}, lmbda {LMBDA}, beta {BETA}, max {MAX_NEW_TOKENS} new "
          f"tokens, fp32, {THREADS} torch threads, {os.cpu_count()} CPUs")
    print(f"{'':>6}{'step s':>9}{'gen s':>8}{'gen share':>11}{'tok/step':>10}{'tok/s':>9}{'peak RSS GB':>13}"
          f"{'first loss':>13}{'batch ids':>14}{'step-2 prompts':>16}")
    for which in variants:
        first = results[which][0]
        per_step = statistics.median(n for r in results[which] for n in r["completion_tokens"][1:])
        print(f"{which:>6}{median(which, 'median_step_s'):>9.2f}{median(which, 'median_generation_s'):>8.2f}"
              f"{median(which, 'generation_share'):>11.0%}{per_step:>10.0f}{median(which, 'tokens_per_s'):>9.1f}"
              f"{median(which, 'peak_rss_gb'):>13.2f}{first['first_loss']:>13.6f}{first['batch_ids']:>14}"
              f"{first['step_prompts'][1]:>16}")
    if "ours" in results and "trl" in results:
        ours, trl = results["ours"][0], results["trl"][0]
        same_prompts = ours["step_prompts"] == trl["step_prompts"]
        prompts = "identical" if same_prompts else f"DIFFER: {ours['step_prompts']} vs {trl['step_prompts']}"
        same_batch = ours["batch_ids"] == trl["batch_ids"]
        gap = abs(ours["first_loss"] - trl["first_loss"]) / abs(trl["first_loss"])
        speed = median("ours", "tokens_per_s") / median("trl", "tokens_per_s")
        memory = median("ours", "peak_rss_gb") / median("trl", "peak_rss_gb")
        met = speed >= TARGET_SPEED and memory <= TARGET_MEMORY
        print(f"ours vs trl: tokens/s {speed:.2f}x TRL's (target >= {TARGET_SPEED}), peak RSS {memory:.2f} of TRL's "
              f"(target <= {TARGET_MEMORY}): {'target met' if met else 'target NOT met'}")
        print(f"first-step loss (off-policy, same batch): ours {ours['first_loss']:.8f}, TRL {trl['first_loss']:.8f}, "
              f"relative gap {gap:.1e} ({'ok' if gap < 1e-5 else 'FAIL: > 1e-5'}); batch token ids "
              f"{'identical' if same_batch else 'DIFFER'}; prompts of every step {prompts}")


if __name__ == "__main__":
    main()
