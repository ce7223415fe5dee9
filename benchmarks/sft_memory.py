"""Where SFT memory goes: RSS and peak RSS around each optimizer step of our SFT loss on SmolLM2-135M (fp32, CPU).

One step = the longest 8 of the first 64 benchmark rows (8 x 256 tokens), split into micro-batches, then clipping and
fused AdamW, then zeroing the gradients as the engine does (``--free-grads``: set them to None instead, the engine's
``keep_grad_buffers: false``). Run one configuration per process so that ``ru_maxrss`` is its own. Memory is in GiB
(2**30 bytes), as in ``sft_vs_trl.py``:

    python benchmarks/sft_memory.py --micro-batch 8
    python benchmarks/sft_memory.py --micro-batch 2 --gradient-checkpointing
    python benchmarks/sft_memory.py --micro-batch 1 --gradient-checkpointing      (the memory-lean configuration)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sft_vs_trl import benchmark_rows  # noqa: E402

from posttrain.engine import preallocate_training_state  # noqa: E402
from posttrain.data import DataConfig, collate, load_rows, normalize_rows, tokenize_sft  # noqa: E402
from posttrain.models import load_model  # noqa: E402
from posttrain.models.forward import token_logps  # noqa: E402
from posttrain.math import sft_nll_sum  # noqa: E402
from posttrain.math.logprobs import DEFAULT_CHUNK_SIZE  # noqa: E402


def rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-batch", type=int, default=8, choices=[1, 2, 4, 8])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--free-grads", action="store_true", help="zero_grad(set_to_none=True) after each step")
    parser.add_argument("--no-preallocate", action="store_true",
                        help="let the first step create the AdamW moments (and gradients), as before the engine's "
                             "preallocate_training_state")
    args = parser.parse_args()

    model, tokenizer = load_model("smollm2-135m-instruct", "float32")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bench.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in benchmark_rows()))
        config = DataConfig(path=str(data), max_length=256)
        fmt, rows = normalize_rows(load_rows(config.path), config, ("prompt_completion",))
        examples, _ = tokenize_sft(rows[:64], fmt, tokenizer, config)
    examples = sorted(examples, key=len)[-8:]
    batches = [collate(examples[i : i + args.micro_batch], tokenizer.pad_token_id) for i in range(0, 8, args.micro_batch)]
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    if not args.no_preallocate:
        preallocate_training_state(optimizer, with_grads=not args.free_grads)
    total = sum(int(b["loss_mask"][:, 1:].sum()) for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"loaded: rss {rss_gib():.2f} GiB; step = {len(batches)} x {args.micro_batch} sequences, {tokens} tokens")
    for step in range(args.steps):
        started = time.perf_counter()
        for batch in batches:
            stats, mask = token_logps(model, batch, chunk_size=args.chunk_size)
            (sft_nll_sum(stats.logps, mask) / total).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=args.free_grads)
        print(f"step {step}: {time.perf_counter() - started:.1f} s, rss {rss_gib():.2f} GiB, peak {peak_gib():.2f} GiB",
              flush=True)


if __name__ == "__main__":
    main()
