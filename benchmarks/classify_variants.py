"""method: classify four ways (head only, lower half frozen, LoRA, full fine-tuning) and transformers' Trainer with
AutoModelForSequenceClassification (last-token pooling, full fine-tuning) on the same data, steps and batch, in one
invocation. Each run is a fresh subprocess (its own peak RSS); runs are interleaved over repeats; medians reported.

Per run: held-out accuracy and macro-F1 after training (a task with numeric labels, e.g. review_stars or
sum_magnitude, is regression: one output, squared error, held-out MSE and Pearson r instead), non-pad tokens/s over
steps 2..N, peak RSS, trainable parameters, wall time. Ours uses last pooling too, so the full fine-tuning runs
differ only in the training loop.

    python benchmarks/classify_variants.py --steps 150 --repeats 1                     (SmolLM2-135M, CPU: long)
    python benchmarks/classify_variants.py --steps 150 --data data/classify/sum_magnitude_train.jsonl  (regression)
    CLASSIFY_BENCH_MODEL=tiny CLASSIFY_BENCH_EVAL_N=32 python benchmarks/classify_variants.py --steps 5 --variants head,full
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from harness import median, report, run_interleaved

MODEL = os.environ.get("CLASSIFY_BENCH_MODEL", "smollm2-135m-instruct")
EVAL_N = int(os.environ.get("CLASSIFY_BENCH_EVAL_N", "200"))
BATCH, MAX_LENGTH = 16, 32
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> config overrides of ours
    "head": {"head_only": True, "learning_rate": 1e-3},
    "half": {"freeze": {"embeddings": True, "layers": "lower-half"}, "learning_rate": 3e-5},
    "lora": {"lora": {"enabled": True, "r": 16}, "learning_rate": 5e-4},
    "full": {"learning_rate": 3e-5},
}


def eval_path(data: Path) -> Path:
    """The held-out file beside a shipped training file: ``<task>_train.jsonl`` -> ``<task>_eval.jsonl``."""
    return data.with_name(data.name.replace("_train", "_eval"))


def is_regression(data: Path) -> bool:
    """Numeric labels make a regression task (the shipped review_stars and sum_magnitude files)."""
    with data.open() as rows:
        return isinstance(json.loads(rows.readline())["label"], float)


def scores(metrics: dict) -> dict:
    """The held-out figures the table prints, from metric name -> value."""
    names = ("mse", "pearson") if "mse" in metrics else ("accuracy", "macro_f1")
    return dict(zip(("score", "score2"), (metrics[name] for name in names)))


def run_ours(which: str, data: Path, steps: int, out_dir: Path) -> dict:
    from posttrain.api import train
    from posttrain.models import load_model
    from posttrain.models.freeze import decoder_layers

    overrides = json.loads(json.dumps(VARIANTS[which]))
    if overrides.get("freeze", {}).get("layers") == "lower-half":
        layers = len(decoder_layers(load_model(MODEL, "float32", "cpu")[0]))
        overrides["freeze"]["layers"] = f"0-{layers // 2 - 1}"
    config = {"method": "classify", "model": MODEL, "output_dir": str(out_dir), "max_steps": steps,
              "batch_size": BATCH, "lr_schedule": "constant", "pooling": "last", "logging_steps": 1,
              "eval_on_start": False, "progress_bar": False, "eval_batch_size": 50,
              "data": {"path": str(data), "eval_path": str(eval_path(data)), "eval_split": f"[:{EVAL_N}]",
                       "max_length": MAX_LENGTH}, **({"num_labels": 1} if is_regression(data) else {}), **overrides}
    start = time.perf_counter()
    evaluation = train(config)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (out_dir / "log_history.jsonl").read_text().splitlines()]
    timed = [r for r in log if "tokens_per_s" in r and r["step"] >= 2]
    return {**scores({name: m["value"] for name, m in evaluation["metrics"].items()}),
            "trainable": evaluation["trainable_parameters"], "wall_s": wall, "first_loss": log[0].get("loss", 0.0),
            "tokens": sum(r["num_tokens"] for r in timed),
            "seconds": sum(r["num_tokens"] / r["tokens_per_s"] for r in timed)}


def run_transformers(data: Path, steps: int, out_dir: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from posttrain.data.classification import encode_text
    from posttrain.math.classification_metrics import accuracy, confusion_matrix, macro_f1, regression_metrics
    from posttrain.models import load_tokenizer
    from posttrain.models.loading import model_folder
    from posttrain.models.reward_model import distinct_pad_token

    path = str(model_folder(MODEL))
    tokenizer = distinct_pad_token(load_tokenizer(path))
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    regression = is_regression(data)
    names = [] if regression else sorted({r["label"] for r in rows})

    def encoded(items):
        return [{"input_ids": encode_text(tokenizer, r["text"], None, MAX_LENGTH),
                 "labels": float(r["label"]) if regression else names.index(r["label"])} for r in items]

    # num_labels 1 with float labels: transformers' regression (MSE), as ours with num_labels: 1
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names) or 1, dtype=torch.float32,
                                                               pad_token_id=tokenizer.pad_token_id)
    args = TrainingArguments(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=BATCH,
                             learning_rate=3e-5, lr_scheduler_type="constant", use_cpu=True, logging_steps=1,
                             save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0,
                             max_grad_norm=1.0, weight_decay=0.0)
    token_counts, step_ends = [], []

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, : len(f["input_ids"])], mask[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"]), 1
        token_counts.append(int(mask.sum()))
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())

    start = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(encoded(rows)),
                      data_collator=collate, callbacks=[StepTimes()])
    trainer.train()
    wall = time.perf_counter() - start
    held_out = encoded([json.loads(line) for line in eval_path(data).read_text().splitlines()][:EVAL_N])
    model.eval()
    predictions = []
    with torch.no_grad():
        for i in range(0, len(held_out), 50):
            batch = collate(held_out[i : i + 50])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            predictions.append(logits[:, 0] if regression else logits.argmax(-1))
    predicted, labels = torch.cat(predictions), torch.tensor([r["labels"] for r in held_out])
    metrics = regression_metrics(predicted, labels) if regression else \
        {"accuracy": accuracy(predicted, labels), "macro_f1": macro_f1(confusion_matrix(predicted, labels, len(names)))}
    return {**scores(metrics), "first_loss": 0.0,
            "trainable": sum(p.numel() for p in model.parameters()), "wall_s": wall,
            "tokens": sum(token_counts[1:steps]), "seconds": step_ends[-1] - step_ends[0]}


def worker(which: str, data: Path, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = run_transformers(data, steps, Path(tmp)) if which == "transformers" else \
            run_ours(which, data, steps, Path(tmp) / "run")
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", help="internal: run one configuration in this process")
    parser.add_argument("--variants", default="head,half,lora,full,transformers")
    parser.add_argument("--data", default=str(ROOT / "data" / "classify" / "arithmetic_truth_train.jsonl"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.data), args.steps)
        return
    variants = args.variants.split(",")
    results = run_interleaved(__file__, variants, Path(args.data), args.steps, args.repeats,
                              describe=lambda r: f", held-out {r['score']:.3f}, wall {r['wall_s']:.0f} s")
    score, score2 = ("MSE", "Pearson r") if is_regression(Path(args.data)) else ("accuracy", "macro-F1")
    print(f"\n{MODEL}, {args.steps} steps of {BATCH}, held-out {EVAL_N}; medians over {args.repeats} repeats")
    print(f"| variant | {score} | {score2} | trainable | tokens/s | peak RSS GB | wall s |")
    print("|---|---|---|---|---|---|---|")
    for which in variants:
        print(f"| {which} | {median(results, which, 'score'):.3f} | {median(results, which, 'score2'):.3f} | "
              f"{int(median(results, which, 'trainable'))} | {median(results, which, 'tokens_per_s'):.0f} | "
              f"{median(results, which, 'peak_rss_gb'):.2f} | {median(results, which, 'wall_s'):.0f} |")


if __name__ == "__main__":
    main()
