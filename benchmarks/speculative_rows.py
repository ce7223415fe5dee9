"""Speculative decoding (prompt lookup, ``draft_tokens``) against plain decoding, for a given model, at 16 rows per
forward and at one row per forward.

The prompts are the arithmetic task of issue 4 (chat template applied), greedy, at most 64 new tokens. Each setting
runs plain, drafts, plain, drafts (the same process and weights) and prints tokens, decode forwards, seconds and
tokens/s of each run, and whether the completions are identical. Point ``--model`` at a trained checkpoint to see
text that repeats itself (after GRPO the model restates the question and its answer sentence).

``--parts`` also splits one plain 16-row call's time into its parts: building the decoder (packing the weights for
oneDNN), the prefill, the decode forwards, and the rest (sampling, bookkeeping, decoding the texts).

    python benchmarks/speculative_rows.py --model runs/grpo_b8c/checkpoints/step_100      (default: embedded model)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from rollout_vs_hf import arithmetic_questions  # noqa: E402

from posttrain.rollout.prompts import chat_prompt_ids  # noqa: E402
from posttrain.models import load_model  # noqa: E402
from posttrain.rollout import SamplingParams, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--parts", action="store_true", help="time the parts of a plain 16-row call")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, "float32", "cpu")
    model.eval()
    prompts = [chat_prompt_ids(tokenizer, q) for q in arithmetic_questions(16)]
    for label, prompt_ids, batch_size in (("16 rows", prompts, None), ("1 row x 4 prompts", prompts[:4], 1)):
        completions = {}
        for drafts in (0, args.draft_tokens, 0, args.draft_tokens):
            params = SamplingParams(max_new_tokens=64, temperature=0.0, draft_tokens=drafts)
            started = time.perf_counter()
            rollout = sample(model, tokenizer, prompt_ids, params, batch_size=batch_size)
            seconds = time.perf_counter() - started
            completions[drafts] = rollout.completion_ids
            print(f"{label}, draft_tokens={drafts}: {rollout.num_generated_tokens} tokens, "
                  f"{rollout.num_decode_forwards} decode forwards, {seconds:.2f} s, "
                  f"{rollout.num_generated_tokens / seconds:.1f} tok/s", flush=True)
        print(f"{label}: identical completions: {torch.equal(completions[0], completions[args.draft_tokens])}")
    if args.parts:
        for _ in range(2):
            time_parts(model, tokenizer, prompts)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def time_parts(model, tokenizer, prompt_ids) -> None:
    """One plain greedy call with the decoder's methods timed (wrapped for this call only)."""
    from posttrain.rollout.decoders import LlamaDecoder

    spent = {"build decoder (pack weights)": 0.0, "prefill": 0.0, "decode forwards": 0.0}
    originals = {name: getattr(LlamaDecoder, name) for name in ("__init__", "prefill", "step")}

    def timed(part, method):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started
        return run

    LlamaDecoder.__init__ = timed("build decoder (pack weights)", originals["__init__"])
    LlamaDecoder.prefill = timed("prefill", originals["prefill"])
    LlamaDecoder.step = timed("decode forwards", originals["step"])
    try:
        started = time.perf_counter()
        rollout = sample(model, tokenizer, prompt_ids, SamplingParams(max_new_tokens=64, temperature=0.0))
        total = time.perf_counter() - started
    finally:
        for name, method in originals.items():
            setattr(LlamaDecoder, name, method)
    parts = ", ".join(f"{part} {seconds:.2f} s" for part, seconds in spent.items())
    print(f"parts of a plain 16-row call ({rollout.num_generated_tokens} tokens, {rollout.num_decode_forwards} "
          f"forwards): {total:.2f} s = {parts}, the rest {total - sum(spent.values()):.2f} s")


if __name__ == "__main__":
    main()
