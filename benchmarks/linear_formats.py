"""Would int8 weights bring a 16-row decode step under the 5x budget? The linear layers of one SmolLM2-135M decode
step (30 layers of joined q/k/v, o, joined gate/up and down, then the 49152-row head) on 16 rows, in each weight
format this CPU build of torch offers, interleaved round by round in one process (medians, ms per step):

- the rollout engine's own oneDNN-packed fp32 and bf16 weights (``posttrain.rollout.packed.fused_linear``);
- plain ``F.linear`` in fp32 and bf16 (what unpacked eager code pays);
- fbgemm's dynamic int8 linear (per-tensor int8 weights, activations quantized per call) and its dynamic fp16 one.

Random weights of the model's shapes: speed only, no accuracy claim.

    python benchmarks/linear_formats.py [--repeats 7] [--rows 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

HIDDEN, INTERMEDIATE, KV_WIDTH, VOCAB, LAYERS = 576, 1536, 192, 49152, 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=16)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from torch import nn

    from posttrain.rollout.packed import fused_linear

    torch.manual_seed(0)
    layer = [(HIDDEN + 2 * KV_WIDTH, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]
    shapes = layer * LAYERS + [(VOCAB, HIDDEN)]
    linears = []
    for out_features, in_features in shapes:
        linear = nn.Linear(in_features, out_features, bias=False)
        nn.init.normal_(linear.weight, std=0.02)
        linears.append(linear)
    inputs = {dtype: [torch.randn(args.rows, m.in_features, dtype=dtype) for m in linears]
              for dtype in (torch.float32, torch.bfloat16)}

    def plain(dtype):
        weights = [m.weight.detach().to(dtype) for m in linears]
        return [lambda x, w=w: F.linear(x, w) for w in weights], dtype

    def dynamic_int8():
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import default_dynamic_qconfig
        quantized = []
        for m in linears:
            m.qconfig = default_dynamic_qconfig
            quantized.append(DynamicLinear.from_float(m))
        return quantized, torch.float32

    def dynamic_fp16():
        packed = [torch.ops.quantized.linear_prepack_fp16(m.weight.detach(), None) for m in linears]
        return [lambda x, p=p: torch.ops.quantized.linear_dynamic_fp16(x, p) for p in packed], torch.float32

    formats = {
        "ours, packed fp32": lambda: ([fused_linear([m], args.rows) for m in linears], torch.float32),
        "ours, packed bf16": lambda: ([fused_linear([m], args.rows, torch.bfloat16) for m in linears], torch.bfloat16),
        "F.linear fp32": lambda: plain(torch.float32),
        "F.linear bf16": lambda: plain(torch.bfloat16),
        "fbgemm dynamic int8": dynamic_int8,
        "fbgemm dynamic fp16": dynamic_fp16,
    }
    built = {}
    for name, build in formats.items():
        try:
            built[name] = build()
        except (RuntimeError, ImportError, AttributeError) as error:  # a build of torch without that backend
            print(f"{name}: not available ({error})")

    times = {name: [] for name in built}
    with torch.no_grad():
        for round_index in range(args.repeats + 1):  # round 0 warms up
            for name, (functions, dtype) in built.items():
                start = time.perf_counter()
                for function, x in zip(functions, inputs[dtype]):
                    function(x)
                if round_index:
                    times[name].append((time.perf_counter() - start) * 1e3)

    reference = statistics.median(times["ours, packed bf16"]) if "ours, packed bf16" in times else None
    print(f"linear layers of one {args.rows}-row decode step, median of {args.repeats} (ms):")
    for name, values in times.items():
        ratio = f"  ({reference / statistics.median(values):.2f}x packed bf16's speed)" if reference else ""
        print(f"  {name:22s} {statistics.median(values):7.1f}  [{min(values):.1f}-{max(values):.1f}]{ratio}")


if __name__ == "__main__":
    main()
