"""Offline KD's memory: logit distillation with the live teacher (teacher_top_k) against the same run reading the
teacher's cached top-k bins (teacher_cache: the teacher is freed before training). One fresh process per run, in the
order live, cache (cold: computes the cache, then frees the teacher), cache (warm: reuses it); each reports its peak
RSS (whole process) and the largest RSS seen after an optimizer step (the teacher's share of training memory), with
the run's losses, which must agree to 1e-6.

    python benchmarks/teacher_cache_memory.py --teacher smollm2-135m-instruct --student-every 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def worker(args) -> None:
    import torch

    from posttrain.api import train

    torch.set_num_threads(args.threads)
    after_steps: list[float] = []
    config = {
        "method": "distill", "model": None, "teacher": args.teacher,
        "student": {"from": "teacher", "every": args.student_every}, "teacher_top_k": args.top_k, "alpha": 0.5,
        "teacher_cache": args.worker != "live", "teacher_cache_dir": str(Path(args.out) / "cache"),
        "output_dir": str(Path(args.out) / args.worker), "overwrite_output_dir": True, "max_steps": args.steps,
        "batch_size": args.batch_size, "logging_steps": 1, "eval_steps": None, "save_steps": None,
        "progress_bar": False, "learning_rate": 1e-5,
        "data": {"path": args.data, "split": f"[:{args.rows}]", "eval_path": args.data, "eval_split": "[:8]",
                 "max_length": 128},
    }
    evaluation = train(config, callbacks=[lambda engine, state: after_steps.append(rss_gb())])
    lines = (Path(config["output_dir"]) / "log_history.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r and "eval_loss" not in r]
    print("RESULT " + json.dumps({
        "run": args.worker, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "max_rss_after_step_gb": max(after_steps), "losses": losses,
        "cache": evaluation.get("teacher_cache"), "student_parameters": evaluation["total_parameters"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--student-every", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default="data/sft/arithmetic_train.jsonl")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    out = args.out or tempfile.mkdtemp(prefix="teacher_cache_memory_")
    results = []
    for run in ("live", "cache-cold", "cache-warm"):
        command = [sys.executable, __file__, "--worker", run, "--out", out] + [
            f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
            if key not in ("worker", "out") and value is not None]
        proc = subprocess.run(command, capture_output=True, text=True,
                              env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1"))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{run} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(lines[-1][7:]))
        r = results[-1]
        print(f"{run:>10}: peak RSS {r['peak_rss_gb']:.2f} GB, max RSS after a step "
              f"{r['max_rss_after_step_gb']:.2f} GB, cache {r['cache']}, losses {r['losses']}", flush=True)
    live = results[0]["losses"]
    for r in results[1:]:
        print(f"{r['run']}: largest loss difference to live {max(abs(a - b) for a, b in zip(live, r['losses'])):.2e}")


if __name__ == "__main__":
    main()
