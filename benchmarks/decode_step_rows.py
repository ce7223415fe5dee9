"""Time of one decode step of our rollout engine (``LlamaDecoder``) against the number of active rows.

The embedded SmolLM2-135M-Instruct in fp32: 16 chat prompts are prefilled, then the batch is cut to 16, 8, 4, 2 and 1
rows and five greedy steps are timed at each size (median of steps 2-5). Compare with the ceilings that
``benchmarks/memory_bandwidth.py`` measures: a step reads every weight once (bandwidth) and does 2 x 134 M
multiply-adds per row (compute).

    python benchmarks/decode_step_rows.py          (needs: pip install -e '.[embedded]')
"""

from __future__ import annotations

import statistics
import time

import torch

from posttrain.models.loading import load_model, load_tokenizer
from posttrain.rollout.decoders import make_decoder
from posttrain.rollout.sampling import chat_prompts


def main() -> None:
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
            times = []
            for _ in range(5):
                started = time.perf_counter()
                tokens = decoder.step(tokens).argmax(-1)
                times.append(time.perf_counter() - started)
            step = statistics.median(times[1:])
            print(f"{rows:>2} rows: {step * 1e3:.1f} ms per step, {rows / step:.0f} tokens/s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
