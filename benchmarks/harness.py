"""What every peer benchmark shares: one fresh subprocess per run (so peak RSS is its own), runs interleaved
A, B, A, B on the shared 2-core machine, one RESULT line per run with its resource usage, medians over repeats."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path


def report(result: dict) -> None:
    """Worker side: add throughput and this process's resource usage, print the RESULT line."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        tokens_per_s=result["tokens"] / result["seconds"],
        peak_rss_gb=usage.ru_maxrss / 1024**2,  # Linux reports KiB
        minor_faults=usage.ru_minflt,  # the kernel zero-filling freshly faulted pages
        system_s=usage.ru_stime,
        user_s=usage.ru_utime,
    )
    print("RESULT " + json.dumps(result))


def run_interleaved(script: str, variants: list[str], data: Path, steps: int, repeats: int,
                    describe=lambda result: "") -> dict[str, list[dict]]:
    """Run ``script --worker VARIANT`` for every variant, ``repeats`` rounds, interleaved; results per variant."""
    results = {which: [] for which in variants}
    for repeat in range(repeats):
        for which in variants:
            proc = subprocess.run([sys.executable, script, "--worker", which, "--data", str(data),
                                   "--steps", str(steps)], capture_output=True, text=True,
                                  env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1"))
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{which} run failed:\n{proc.stderr[-4000:]}")
            result = json.loads(lines[-1][7:])
            results[which].append(result)
            print(f"repeat {repeat + 1} {which:>13}: {result['tokens_per_s']:.1f} tok/s, "
                  f"peak RSS {result['peak_rss_gb']:.2f} GB, first loss {result['first_loss']:.6f}, "
                  f"sys {result['system_s']:.1f} s, minor faults {result['minor_faults']}{describe(result)}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    return results


def median(results: dict[str, list[dict]], which: str, key: str) -> float:
    return statistics.median(r[key] for r in results[which])
