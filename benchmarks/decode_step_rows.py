"""Time of one decode step of our rollout engine (``LlamaDecoder``) against the number of active rows and the
number of tokens fed per row (``W``: 1 for plain decoding, 1 + the drafts when speculative decoding verifies them).

The embedded SmolLM2-135M-Instruct in fp32: 16 chat prompts are prefilled, then the batch is cut to 16, 8, 4, 2 and 1
rows and five steps are timed at each size and width (median of steps 2-5; each step is rewound after it, so the
cache length stays the same). Compare with the ceilings that
``benchmarks/memory_bandwidth.py`` measures: a step reads every weight once (bandwidth) and does 2 x 134 M
multiply-adds per row (compute).

    python benchmarks/decode_step_rows.py --widths 1,2,4,8     (needs: scripts/setup.sh embedded)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from posttrain.models.loading import load_model, load_tokenizer
from posttrain.rollout.decoders import make_decoder
from posttrain.rollout.prompts import chat_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="1", help="tokens fed per row per step, comma-separated")
    widths = [int(w) for w in parser.parse_args().widths.split(",")]
    model = load_model("smollm2-135m-instruct", dtype="float32")[0].eval()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    prompts = chat_prompts(tokenizer, [f"What is {10 + i} + {30 + i}? Reply with the final answer as 'The answer is "
                                       "N.'" for i in range(16)])
    with torch.no_grad():
        decoder = make_decoder(model, 16, 256)
        tokens = decoder.prefill(prompts, 1).argmax(-1)
        for rows in (16, 8, 4, 2, 1):
            decoder.reorder(torch.arange(rows))
            tokens = tokens[:rows]
            line = []
            for width in widths:
                times = []
                for _ in range(5):
                    started = time.perf_counter()
                    decoder.step(tokens[:, None].expand(-1, width))
                    times.append(time.perf_counter() - started)
                    decoder.rewind(torch.full((rows,), width))
                step = statistics.median(times[1:])
                line.append(f"W={width}: {step * 1e3:.1f} ms")
            print(f"{rows:>2} rows: " + ", ".join(line) + " per step")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
