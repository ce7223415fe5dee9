"""What bf16 buys on this CPU, part by part, fp32 and bf16 interleaved in one process (medians):

- a big matmul (2304x576 by 576x1536, the MLP shape of a GRPO training batch), GFLOP/s;
- a training forward and backward of SmolLM2-135M on 32 x 80 tokens (35 completion tokens each, log-probs and
  entropy as GRPO computes them), fp32 against bf16 autocast;
- one 16-row decode step of the rollout engine (``LlamaDecoder``) in fp32 and in bf16, and the time its linear layers
  take in it (torch.profiler).

    python benchmarks/bf16_cpu.py [--repeats 3]            (needs: scripts/setup.sh embedded)
"""

from __future__ import annotations

import argparse
import statistics
import time


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from torch.profiler import profile

    from posttrain.models import load_model
    from posttrain.models.forward import token_logps
    from posttrain.rollout.decoders import LlamaDecoder

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    flops = 2 * 2304 * 576 * 1536
    for name, dtype in dtypes.items():
        a, w = torch.randn(2304, 576).to(dtype), torch.randn(1536, 576).to(dtype)
        seconds = timed(lambda: torch.nn.functional.linear(a, w), 10 * args.repeats)
        print(f"matmul {name}: {flops / seconds / 1e9:.0f} GFLOP/s", flush=True)

    model, _ = load_model("smollm2-135m-instruct", "float32", "cpu")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (32, 80), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "loss_mask": torch.cat([torch.zeros(32, 45), torch.ones(32, 35)], 1).long()}

    def train_step(dtype):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            stats, mask = token_logps(model, batch, with_entropy=True)
            loss = (stats.logps * mask).sum() / mask.sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.train()
    steps = {name: [] for name in dtypes}
    for _ in range(args.repeats):  # interleaved
        for name, dtype in dtypes.items():
            steps[name].append(timed(lambda: train_step(dtype), 1))
    for name in dtypes:
        print(f"training forward+backward, 32 x 80 tokens, {name}: {statistics.median(steps[name]):.2f} s", flush=True)

    model.eval()
    prompt = list(range(1, 54))
    with torch.no_grad():
        for name, dtype in dtypes.items():
            decoder = LlamaDecoder(model, 16, 200, dtype)
            tokens = decoder.prefill([prompt] * 16, 1).argmax(-1)[:, None]
            one = torch.ones(16, dtype=torch.long)

            def step():
                decoder.step(tokens)
                decoder.rewind(one)

            seconds = timed(step, 20 * args.repeats)
            with profile() as prof:
                for _ in range(5):
                    step()
            linear = sum(e.self_cpu_time_total for e in prof.key_averages() if "linear" in e.key) / 5 / 1e3
            print(f"decode step, 16 rows, {name}: {seconds * 1e3:.1f} ms; its linear layers {linear:.1f} ms "
                  "(profiled)", flush=True)


if __name__ == "__main__":
    main()
