"""2 processes x 1 thread against 1 process x 2 threads: SFT of the embedded SmolLM2-135M on this CPU.

Both take the same optimizer steps (the same global batch: 2 x ``--micro-batch`` against 1 x 2 ``--micro-batch``,
docs/distributed.md) from ``configs/sft.yaml``, shortened. Runs are interleaved (A, B, A, B, ...) and each figure is
the median over the runs: tokens/s (non-pad tokens over the steps after the first, from log_history.jsonl) and every
process's peak RSS (``ru_maxrss``, printed by each process as it exits). On a machine with 2 cores both use both
cores; what differs is gradient all-reduce and two copies of the model and optimizer state against intra-op
threading. Results go to stdout as JSON:

    python benchmarks/distributed.py --steps 8 --repeats 3 > /tmp/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK = re.compile(r"PEAK_RSS rank=(\d+) (\d+) MiB")
CHILD = ("import atexit, os, resource, sys\n"
         "atexit.register(lambda: print(f\"PEAK_RSS rank={os.environ.get('RANK', '0')} \"\n"
         "    f\"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB\", file=sys.stderr, flush=True))\n"
         "from posttrain.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def run(processes: int, micro_batch: int, steps: int, workdir: Path) -> dict:
    """One training run; its tokens/s and each process's peak RSS (MiB)."""
    out = workdir / f"{processes}proc"
    child = workdir / "child.py"
    child.write_text(CHILD)
    overrides = [f"max_steps={steps}", "data.split=train[:256]", "eval_on_start=false", "data.eval_split=[:8]",
                 "save_steps=null", "progress_bar=false", "logging_steps=1", "overwrite_output_dir=true",
                 f"batch_size={micro_batch * (2 // processes)}", f"output_dir={out}"]
    threads = 2 // processes
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([*launcher, str(child), "train", str(ROOT / "configs" / "sft.yaml"), *overrides],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    records = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    steps_after_first = [r for r in records if "tokens_per_s" in r and r["step"] > 1]
    tokens = sum(r["num_tokens"] for r in steps_after_first)
    seconds = sum(r["num_tokens"] / r["tokens_per_s"] for r in steps_after_first)
    return {"tokens_per_s": tokens / seconds, "peak_rss_mib": {int(r): int(m) for r, m in PEAK.findall(done.stderr)},
            "losses": [r["loss"] for r in records if "loss" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4, help="per process with 2 processes (1 process: twice)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"2 processes x 1 thread": [], "1 process x 2 threads": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved: A, B, A, B, ...
            results["2 processes x 1 thread"].append(run(2, args.micro_batch, args.steps, Path(tmp)))
            results["1 process x 2 threads"].append(run(1, args.micro_batch, args.steps, Path(tmp)))
    summary = {name: {"tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in runs),
                      "peak_rss_mib_median_per_rank": {
                          rank: statistics.median(r["peak_rss_mib"][rank] for r in runs)
                          for rank in sorted(runs[0]["peak_rss_mib"])},
                      "runs": runs}
               for name, runs in results.items()}
    json.dump({"steps": args.steps, "micro_batch": args.micro_batch, "repeats": args.repeats, **summary},
              sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
