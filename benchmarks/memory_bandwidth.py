"""How fast this machine streams fp32 weights and multiplies with them: the ceilings of a decode step.

A decode step at 16 rows multiplies 16 vectors by every weight matrix of the model: for SmolLM2-135M in fp32 that is
538 MB read per step whatever the batch, and too little arithmetic per byte to hide it. So

    tokens/s <= rows / (model bytes / bandwidth)

and this script measures the bandwidth two ways, with torch's default threads: a reduction over a 1 GiB tensor (the
most favourable read pattern), and 16-row matrix products over a set of SmolLM2-shaped fp32 weights as large as the
model (what a decode step does, without attention and sampling), with ``F.linear`` at 16 rows and with the
oneDNN-prepacked, sibling-fused layers our decoder uses (``posttrain/rollout/packed.py``) at 1 to 16 rows; and, for
the compute side, a large square fp32 matmul. Medians of --repeats runs.

    python benchmarks/memory_bandwidth.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# SmolLM2-135M: 30 layers of q (576x576), k and v (192x576 each), o (576x576), gate and up (1536x576), down
# (576x1536), and the 49152x576 output head
LAYER_SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
LAYERS, HEAD, ROWS = 30, (49152, 576), 16


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: page faults, kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def packed_step_floor(repeats: int, model_bytes: int) -> None:
    """The linear layers of one decode step as our decoder runs them: q/k/v and gate/up fused, weights prepacked."""
    from torch import nn

    from posttrain.rollout.packed import fused_linear, single_linear

    def linear(out_features, in_features):
        return nn.Linear(in_features, out_features, bias=False)

    for rows in (1, 4, 8, 16):
        calls = []
        for _ in range(LAYERS):
            calls.append((576, fused_linear([linear(576, 576), linear(192, 576), linear(192, 576)], ROWS)))
            calls.append((576, single_linear(linear(576, 576), ROWS)))
            calls.append((576, fused_linear([linear(1536, 576), linear(1536, 576)], ROWS)))
            calls.append((1536, single_linear(linear(576, 1536), ROWS)))
        calls.append((576, single_linear(linear(*HEAD), ROWS)))
        x = {576: torch.randn(rows, 576), 1536: torch.randn(rows, 1536)}

        def one_step(calls=calls, x=x):
            for width, call in calls:
                call(x[width])

        with torch.no_grad():
            seconds = timed(one_step, repeats)
        print(f"{rows:>2} rows through the prepacked, fused layers (121 calls): {seconds * 1e3:.1f} ms per step, "
              f"{model_bytes / seconds / 1e9:.1f} GB/s of weights")
        del calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    big = torch.randn(2**28)  # 1 GiB of fp32
    seconds = timed(lambda: big.sum(), args.repeats)
    print(f"sum over 1 GiB: {seconds * 1e3:.1f} ms, {big.numel() * 4 / seconds / 1e9:.1f} GB/s")
    del big

    weights = [torch.randn(shape) for _ in range(LAYERS) for shape in LAYER_SHAPES] + [torch.randn(HEAD)]
    model_bytes = sum(w.numel() * 4 for w in weights)
    x = {576: torch.randn(ROWS, 576), 1536: torch.randn(ROWS, 1536)}

    def one_step():
        for w in weights:
            torch.nn.functional.linear(x[w.shape[1]], w)

    seconds = timed(one_step, args.repeats)
    flops = 2 * ROWS * sum(w.numel() for w in weights)
    print(f"{ROWS}-row products over {model_bytes / 1e6:.0f} MB of weights: {seconds * 1e3:.1f} ms per step, "
          f"{model_bytes / seconds / 1e9:.1f} GB/s, {flops / seconds / 1e9:.0f} GFLOP/s, "
          f"ceiling {ROWS / seconds:.0f} tokens/s at {ROWS} rows")
    packed_step_floor(args.repeats, model_bytes)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    seconds = timed(lambda: a @ b, args.repeats)
    print(f"2048x2048 fp32 matmul (the compute ceiling torch reaches here): {2 * 2048**3 / seconds / 1e9:.0f} GFLOP/s; "
          f"a {ROWS}-row step's {flops / 1e9:.1f} GFLOP would take {flops / (2 * 2048**3 / seconds) * 1e3:.0f} ms at "
          "that rate")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
