"""The training loop's own cost, this tree against another checkout of posttrain, in one invocation.

An SFT run of the tiny model (3.2 M parameters, 8 micro-batches of one sequence per step) has steps of a few
hundred ms, so a per-step cost the loop adds (collating, hooks, logging) shows here at a resolution that the ~17 s
steps of the embedded model, whose timings vary by +-10% between runs on a shared 2-core machine, cannot give. Each
run is a fresh process on one thread; runs alternate (this tree, the other, ...); medians of the per-step wall time
over steps 11..N are reported, with the logged losses of both (identical when the two trees train the same way).

    python benchmarks/engine_ab.py --other /tmp/old_tree --steps 200 --repeats 3
    (git worktree add /tmp/old_tree <commit> makes the other checkout)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, tempfile, time
import torch
torch.set_num_threads(1)
from posttrain.api import build_method_config
rows = [{"prompt": f"Count from {i}.", "completion": " ".join(str(i + k) for k in range(8 + i % 24))}
        for i in range(400)]
folder = tempfile.mkdtemp()
data = f"{folder}/data.jsonl"
open(data, "w").write("".join(json.dumps(r) + "\n" for r in rows))
steps = int(sys.argv[1])
ends = []
train, config = build_method_config({
    "method": "sft", "model": "tiny", "output_dir": f"{folder}/run", "max_steps": steps, "batch_size": 1,
    "grad_accum_steps": 8, "learning_rate": 1e-3, "logging_steps": 1, "eval_on_start": False, "progress_bar": False,
    "data": {"path": data, "max_length": 128},
})
train(config, callbacks=[lambda engine, state: ends.append(time.perf_counter())])
losses = [json.loads(line)["loss"] for line in open(f"{folder}/run/log_history.jsonl") if '"loss"' in line]
print(json.dumps({"step_s": [b - a for a, b in zip(ends, ends[1:])], "losses": losses}))
"""


def run(tree: Path, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", WORKER, str(steps)], env=env, cwd=cwd, capture_output=True,
                             text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", required=True, help="another checkout of the repository (its root folder)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trees = {"this": HERE, "other": Path(args.other).resolve()}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for repeat in range(args.repeats):
        for name, tree in trees.items():
            result = run(tree, args.steps)
            timed = result["step_s"][10:]
            results[name].append(result)
            print(f"repeat {repeat + 1} {name:>5}: median step {1000 * statistics.median(timed):.2f} ms over "
                  f"{len(timed)} steps, load {os.getloadavg()[0]:.2f}", flush=True)
    for name, runs in results.items():
        medians = [statistics.median(r["step_s"][10:]) for r in runs]
        print(f"{name:>5} ({trees[name]}): median of medians {1000 * statistics.median(medians):.2f} ms per step")
    same = all(r["losses"] == results["this"][0]["losses"] for runs in results.values() for r in runs)
    print(f"logged losses identical in every run of both trees: {same}")


if __name__ == "__main__":
    main()
