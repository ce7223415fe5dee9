"""bf16 SFT and GRPO of the embedded SmolLM2-135M on this machine's GPUs: tokens/s, MFU and peak GPU memory per rank.

Runs ``configs/sft.yaml`` and ``configs/grpo.yaml``, shortened, with ``precision=bf16`` (fp32 master weights, bf16
autocast): on 1 GPU, and when the machine has several, data-parallel (``distributed.strategy=ddp``) and sharded
(``fsdp``) on all of them through torchrun (docs/distributed.md). GRPO runs 1 GPU and DDP only: FSDP refuses the
sampling methods. Each run is a fresh process tree, so its peak memory is its own.

- tokens/s: the training forward's non-pad tokens (all ranks) over the wall time of the steps after the first, from
  log_history.jsonl. For GRPO that wall time includes sampling, whose FLOPs the MFU below does not count.
- MFU: 6 x parameters x tokens/s over the peak dense bf16 FLOP/s of all the GPUs used (forward 2N + backward 4N per
  token, attention's FLOPs ignored; the parameters of the saved model, the tied embedding counted once).
- memory: ``torch.cuda.max_memory_allocated`` of every rank, printed by each process as it exits.

On a machine without CUDA it prints one line and exits 0. Results go to ``--out`` (JSON):

    python benchmarks/gpu/throughput.py --steps 20 --out /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Peak dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' data sheets (SXM parts for H100/H200/A100).
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12),
                   ("L4", 121e12))
PEAK_MEMORY = re.compile(r"PEAK_CUDA_MEMORY rank=(\d+) (\d+)")
CHILD = ("import atexit, os, sys, torch\n"
         "atexit.register(lambda: print(f\"PEAK_CUDA_MEMORY rank={os.environ.get('RANK', '0')} \"\n"
         "    f\"{torch.cuda.max_memory_allocated()}\", file=sys.stderr, flush=True))\n"
         "from posttrain.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")
# (method, config, overrides that shorten it); batch_size is per GPU.
METHODS = {
    "sft": ("sft.yaml", ["data.eval_split=[:8]"]),
    "grpo": ("grpo.yaml", ["num_train_prompts=512", "num_eval_prompts=8"]),
}
FSDP_METHODS = {"sft"}  # Method.fsdp: the sampling methods are refused under FSDP


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_throughput.json"), help="where the JSON goes")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=sorted(METHODS))
    parser.add_argument("--sft-batch-size", type=int, default=16, help="SFT examples per GPU per step")
    parser.add_argument("--grpo-batch-size", type=int, default=8, help="GRPO prompts per GPU per step (x group_size 4)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's peak dense bf16 TFLOP/s, for a GPU the built-in table does not know")
    parser.add_argument("--max-gpus", type=int, default=None, help="use at most this many GPUs (default: all)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")
    return args


def peak_flops(device_name: str, peak_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one GPU: ``peak_tflops`` if given, else the table's entry for the name, else None."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in device_name.upper()), None)


def mfu(parameters: int, tokens_per_s: float, gpus: int, flops_per_gpu: float | None) -> float | None:
    """Model FLOPs utilisation: 6 N tokens/s over the peak of all the GPUs (Chowdhery et al. 2022, PaLM, App. B)."""
    if flops_per_gpu is None:
        return None
    return 6 * parameters * tokens_per_s / (gpus * flops_per_gpu)


def plan(methods: list[str], gpus: int) -> list[tuple[str, int, str]]:
    """The runs, as (method, GPUs, strategy): each method on 1 GPU; with several, DDP on all, and FSDP where allowed."""
    runs = [(method, 1, "single") for method in methods]
    if gpus > 1:
        runs += [(method, gpus, strategy) for method in methods for strategy in ("ddp", "fsdp")
                 if strategy == "ddp" or method in FSDP_METHODS]
    return runs


def count_parameters(model_dir: Path) -> int:
    """Elements in a saved model's safetensors files (a tied embedding is stored, and counted, once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def run(method: str, gpus: int, strategy: str, args: argparse.Namespace, workdir: Path) -> dict:
    """One training run: tokens/s, peak memory per rank, and the saved model's parameter count."""
    config, shorten = METHODS[method]
    out = workdir / f"{method}_{strategy}_{gpus}"
    child = workdir / "child.py"
    child.write_text(CHILD)
    batch = args.sft_batch_size if method == "sft" else args.grpo_batch_size
    overrides = [*shorten, f"max_steps={args.steps}", f"batch_size={batch}", "precision=bf16", "eval_on_start=false",
                 "eval_steps=null", "save_steps=null", "progress_bar=false", "logging_steps=1",
                 "overwrite_output_dir=true", f"output_dir={out}"]
    if gpus > 1:
        overrides.append(f"distributed.strategy={strategy}")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    else:
        launcher = [sys.executable]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(gpus))).split(",")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(visible[:gpus]), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*launcher, str(child), "train", str(ROOT / "configs" / config), *overrides],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        return {"error": done.stderr[-3000:]}
    records = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    timed = [r for r in records if "tokens_per_s" in r and r["step"] > 1]
    tokens = sum(r["num_tokens"] for r in timed)
    seconds = sum(r["num_tokens"] / r["tokens_per_s"] for r in timed)
    memory = {int(rank): int(peak) for rank, peak in PEAK_MEMORY.findall(done.stderr)}
    return {"tokens_per_s": tokens / seconds, "timed_steps": len(timed), "parameters": count_parameters(out / "final"),
            "peak_memory_gib_per_rank": {rank: memory[rank] / 2**30 for rank in sorted(memory)},
            "losses": [r["loss"] for r in records if "loss" in r]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu/throughput.py needs a CUDA GPU; none here, nothing run.")
        return 0
    gpus = torch.cuda.device_count() if args.max_gpus is None else min(args.max_gpus, torch.cuda.device_count())
    name = torch.cuda.get_device_name(0)
    flops = peak_flops(name, args.peak_tflops)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, count, strategy in plan(args.methods, gpus):
            result = run(method, count, strategy, args, Path(tmp))
            if "tokens_per_s" in result:
                result["mfu"] = mfu(result["parameters"], result["tokens_per_s"], count, flops)
            results.append({"method": method, "gpus": count, "strategy": strategy, **result})
            print(f"{method} {strategy} x{count}: " + (
                f"{result['tokens_per_s']:.0f} tok/s, MFU {result['mfu']}, memory {result['peak_memory_gib_per_rank']}"
                if "tokens_per_s" in result else f"failed: {result['error'][-300:]}"), flush=True)
    report = {"device": name, "gpus": gpus, "peak_bf16_flops_per_gpu": flops, "steps": args.steps,
              "torch": torch.__version__, "runs": results}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
