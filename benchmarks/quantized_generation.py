"""Greedy generation speed of the embedded model in fp32 and in each `posttrain quantize` format, on this CPU.

Each format is quantized once (``posttrain quantize``), then every model generates ``--new-tokens`` tokens for 1 and
for 16 prompts; runs are interleaved (fp32, int8, ..., fp32, int8, ...) and each figure is the median over
``--repeats`` of generated tokens per second (posttrain's rollout engine, ``posttrain.generate``). Also printed: the
weights' size on disk. Results as JSON on stdout:

    python benchmarks/quantized_generation.py --repeats 3 --new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = ["What is 23 + 48?", "Name three primary colours.", "Write one sentence about the sea.",
           "What is the capital of France?"]


def weights_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def tokens_per_s(model, tokenizer, batch: int, new_tokens: int) -> float:
    """Greedy decoding of exactly ``new_tokens`` per row (no end-of-sequence stop), rows decoded together."""
    from posttrain.rollout import SamplingParams, chat_prompts, sample

    prompts = chat_prompts(tokenizer, [PROMPTS[i % len(PROMPTS)] for i in range(batch)])
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, eos_token_ids=())
    started = time.perf_counter()
    rollout = sample(model, tokenizer, prompts, params)
    return int(rollout.completion_mask.sum()) / (time.perf_counter() - started)


def main() -> None:
    import torch

    from posttrain.api import quantize
    from posttrain.models import load_model
    from posttrain.models.loading import model_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="int8,int8:linear,int8-dynamic,int4",
                        help="comma-separated formats; FORMAT:linear quantizes the linear layers only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"fp32": model_folder("smollm2-135m-instruct")}
        for name in args.formats.split(","):  # FORMAT:linear keeps the embedding and head float (--keep-embeddings)
            fmt, _, only = name.partition(":")
            folders[name] = Path(quantize("smollm2-135m-instruct", Path(tmp) / name.replace(":", "_"), fmt,
                                          embeddings=only != "linear"))
        models = {name: load_model(str(folder)) for name, folder in folders.items()}
        runs = {(name, batch): [] for name in models for batch in (1, 16)}
        for _ in range(args.repeats):
            for batch in (1, 16):
                for name, (model, tokenizer) in models.items():
                    runs[name, batch].append(tokens_per_s(model, tokenizer, batch, args.new_tokens))
        print(json.dumps({name: {"weights_mib": round(weights_mib(folders[name]), 1),
                                 **{f"tokens_per_s_batch_{b}": round(statistics.median(runs[name, b]), 2)
                                    for b in (1, 16)}} for name in models}, indent=1))


if __name__ == "__main__":
    main()
