"""Held-out accuracy, perplexity, size and memory of a model in fp32 and in each `posttrain quantize` format.

For MODEL (a folder, e.g. a GRPO run's final/, or the embedded model's name) and each format, one fresh process
(so its peak RSS is its own) loads the model with posttrain and runs posttrain's eval harness on:
- `arithmetic`: greedy accuracy on the held-out problems the GRPO preset evaluates (configs/grpo.yaml: task
  arithmetic, digits 2, operations +-, the eval split, seed 0, up to 64 new tokens; `--n` of its 200 problems,
  a prefix of them);
- `perplexity` of the reference answers in data/sft/arithmetic_eval.jsonl (`--ppl-rows` rows; held out from the SFT
  data).
Then, in this process, the logits of each format against fp32's on the first `--compare-rows` of those rows (chat
prompt + reference answer), at every position: max |q - fp32| / max |fp32| and the share of positions whose argmax
agrees. Also the weights' size on disk (*.safetensors). A format ending in `:linear` keeps the embedding and the
output head in float32 (`posttrain quantize --keep-embeddings`). Results as JSON on stdout (progress on stderr):

    python benchmarks/quantized_accuracy.py --model runs/grpo/final                 # the full 200 problems
    python benchmarks/quantized_accuracy.py --model smollm2-135m-instruct --n 16 --ppl-rows 16   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PPL_DATA = "data/sft/arithmetic_eval.jsonl"


def suite(n: int, ppl_rows: int) -> list[dict]:
    """The GRPO preset's held-out evaluation (configs/grpo.yaml) and the held-out reference perplexity."""
    return [{"metric": "task_accuracy", "name": "arithmetic", "task": "arithmetic",
             "task_options": {"digits": 2, "operations": "+-"}, "n": n, "max_new_tokens": 64},
            {"metric": "perplexity", "data": PPL_DATA, "limit": ppl_rows}]


def peak_rss_mib() -> int:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries that across exec from the
    parent, which holds the quantized models."""
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024)


def worker(folder: str, n: int, ppl_rows: int) -> None:
    """One format in this process: load, evaluate, report peak RSS (after loading and over the whole run)."""
    import torch

    from posttrain.eval import evaluate
    from posttrain.models import load_model

    started = time.perf_counter()
    model, tokenizer = load_model(folder, dtype="float32", device="cpu")
    loaded_rss = peak_rss_mib()
    load_s = time.perf_counter() - started
    result = evaluate((model.requires_grad_(False), tokenizer), suite(n, ppl_rows), device="cpu",
                      batch_size=16, progress=True, label=folder)
    metrics = result["metrics"]
    print("RESULT " + json.dumps({
        "arithmetic_accuracy": metrics["arithmetic/accuracy"],
        "perplexity": metrics["perplexity"], "nll_per_token": metrics["perplexity/nll_per_token"],
        "failed_metrics": result["failed_metrics"], "load_s": round(load_s, 1), "eval_s": result["time_s"],
        "peak_rss_after_load_mib": loaded_rss, "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}))


def run_worker(folder: Path, args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", str(folder), "--n", str(args.n), "--ppl-rows",
                           str(args.ppl_rows)], capture_output=True, text=True,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                                   OMP_NUM_THREADS=str(args.threads)))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{folder}: the evaluation failed:\n{proc.stderr[-4000:]}")
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith("[eval]")), file=sys.stderr)
    return json.loads(lines[-1][7:])


def compare_rows(tokenizer, rows: int) -> dict:
    """The first ``rows`` reference rows tokenized as perplexity scores them (chat prompt + answer), padded."""
    from posttrain.data import DataConfig, collate, load_rows, normalize_rows, tokenize_sft

    config = DataConfig(max_length=1024)
    fmt, normalized = normalize_rows(load_rows(PPL_DATA)[:rows], config, ("prompt_completion",))
    return collate(tokenize_sft(normalized, fmt, tokenizer, config)[0], tokenizer.pad_token_id)


def logits_against(reference, folder: Path, batch: dict) -> dict:
    import torch

    from posttrain.models import load_model

    model, _ = load_model(str(folder), dtype="float32", device="cpu")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    expected, actual = reference[real], logits[real]
    return {"max_relative_logit_error": round(float((actual - expected).abs().max() / expected.abs().max()), 4),
            "argmax_agreement": round(float((actual.argmax(-1) == expected.argmax(-1)).float().mean()), 4),
            "positions": int(real.sum())}


def weights_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model folder or the embedded name")
    parser.add_argument("--formats", default="int8,int8:linear,int8-dynamic,int4",
                        help="comma-separated `posttrain quantize` formats; FORMAT:linear keeps the embeddings float")
    parser.add_argument("--n", type=int, default=200, help="held-out arithmetic problems (the GRPO preset's 200)")
    parser.add_argument("--ppl-rows", type=int, default=200, help="rows of data/sft/arithmetic_eval.jsonl scored")
    parser.add_argument("--compare-rows", type=int, default=4, help="rows whose logits are compared with fp32's")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each evaluation process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.n, args.ppl_rows)

    import torch

    from posttrain.api import quantize
    from posttrain.models import load_model
    from posttrain.models.loading import model_folder

    torch.set_num_threads(args.threads)
    source = model_folder(args.model)
    results = {"fp32": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"fp32": source}
        for name in args.formats.split(","):
            fmt, _, only = name.partition(":")
            started = time.perf_counter()
            folders[name] = Path(quantize(str(source), Path(tmp) / name.replace(":", "_"), fmt,
                                          embeddings=only != "linear"))
            results[name] = {"quantize_s": round(time.perf_counter() - started, 1)}
        for name, folder in folders.items():
            print(f"[{name}] evaluating", file=sys.stderr, flush=True)
            results[name] = {"weights_mb": weights_mb(folder), **results[name], **run_worker(folder, args)}
        model, tokenizer = load_model(str(source), dtype="float32", device="cpu")
        batch = compare_rows(tokenizer, args.compare_rows)
        with torch.no_grad():
            reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        del model
        for name, folder in list(folders.items())[1:]:
            results[name].update(logits_against(reference, folder, batch))
    print(json.dumps({"model": args.model, "n": args.n, "ppl_rows": args.ppl_rows, "results": results}, indent=1))


if __name__ == "__main__":
    main()
