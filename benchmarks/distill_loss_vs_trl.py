"""The distillation loss alone, beside TRL's two: forward + backward of the generalized JSD (beta 0.5, T = 1) over
N completion positions from hidden states, with SmolLM2-135M's head shapes (V = 49152, H = 576), student and teacher
heads of the same width, fp32 on CPU.

    ours         posttrain.math.chunked_distillation_loss: rows in chunks of 256, the gradient computed in the same pass
    trl-chunked  trl.kernels.chunked_divergence.ChunkedDivergenceFunction (TRL's DistillationTrainer; on CPU its torch
                 path: tiles of 4096 rows x 32768 vocabulary columns)
    trl-gkd      full (N, V) logits of both models, then GKDTrainer.generalized_jsd_loss (TRL's GKDTrainer)

One fresh process per run (its own peak RSS), interleaved A, B, C, A, B, C; medians. The first loss of every variant
must agree (same inputs, same divergence).

    python benchmarks/distill_loss_vs_trl.py --rows 1024 --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import median, report, run_interleaved  # noqa: E402

VOCAB, HIDDEN, BETA = 49152, 576, 0.5


def inputs(rows: int):
    g = torch.Generator().manual_seed(0)
    s_hidden = torch.randn(rows, HIDDEN, generator=g).requires_grad_(True)
    s_weight = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.05).requires_grad_(True)
    t_hidden = torch.randn(rows, HIDDEN, generator=g)
    t_weight = torch.randn(VOCAB, HIDDEN, generator=g) * 0.05
    return s_hidden, s_weight, t_hidden, t_weight


def loss_fn(which: str, s_hidden, s_weight, t_hidden, t_weight) -> torch.Tensor:
    if which == "ours":
        from posttrain.math import chunked_distillation_loss

        targets = torch.zeros(s_hidden.shape[0], dtype=torch.long)  # alpha = 1: the label term has weight 0
        return chunked_distillation_loss(s_hidden, s_weight, t_hidden, t_weight, targets, 1.0, "jsd",
                                         BETA).loss_sum / s_hidden.shape[0]
    if which == "trl-chunked":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        divergence, _ = ChunkedDivergenceFunction.apply(s_hidden, s_weight, None, t_hidden, t_weight, None, BETA)
        return divergence.mean()
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    with torch.no_grad():
        teacher_logits = t_hidden @ t_weight.t()
    return GKDTrainer.generalized_jsd_loss(s_hidden @ s_weight.t(), teacher_logits, beta=BETA)


def worker(which: str, rows: int, steps: int) -> None:
    torch.manual_seed(0)
    tensors = inputs(rows)
    first = None
    loss_fn(which, *tensors).backward()  # warm-up (imports, allocator); not timed
    started = time.perf_counter()
    for _ in range(steps):
        tensors[0].grad = tensors[1].grad = None
        loss = loss_fn(which, *tensors)
        loss.backward()
        first = float(loss) if first is None else first
    report({"which": which, "tokens": rows * steps, "seconds": time.perf_counter() - started, "first_loss": first})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024, help="completion positions per step (N)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="ours,trl-chunked,trl-gkd")
    parser.add_argument("--worker", help="internal: run one variant in this process")
    parser.add_argument("--data", help="internal: the number of rows, passed through the harness")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, int(args.data), args.steps)
        return
    variants = args.variants.split(",")
    results = run_interleaved(__file__, variants, Path(str(args.rows)), args.steps, args.repeats)
    for which in variants:
        print(f"{which:>12}: median {median(results, which, 'tokens_per_s'):8.1f} positions/s, "
              f"peak RSS {median(results, which, 'peak_rss_gb'):.2f} GB")


if __name__ == "__main__":
    main()
