"""Our rollout engine against transformers' ``generate`` on the same prompts, batch and length, in one invocation.

SmolLM2-135M-Instruct (the embedded default), fp32, CPU, 16 completions of at most 64 new tokens per call, both
stopping at EOS. Prompts are the RL task of issue 4 ("What is 47 - 18? Reply with the final answer as 'The answer is
N.'", chat template applied). Scenarios:

- ``sample``: 16 prompts, temperature 1 (no top-k / top-p), one completion each;
- ``greedy``: 16 prompts, temperature 0; the two must produce the same tokens (checked and printed);
- ``group``: 4 prompts x 4 completions at temperature 1, GRPO's shape (transformers: ``num_return_sequences=4``).

``--drafts k`` adds a third engine: ours with exact speculative decoding (prompt lookup, up to k draft tokens per row),
checked to give the same completions as ours without. ``--bf16`` adds two: ours decoding in bfloat16
(``SamplingParams(dtype="bfloat16")``, the float32 model's weights rounded) and transformers on a bfloat16 copy of the
model (its peer in the same dtype); the table compares ours in bfloat16 with both.

Runs alternate ours, HF, ours, HF, ... in one process (same weights in memory) and we report medians. Throughput
counts real completion tokens only: up to and including EOS, nothing after it. Our timing includes everything a call
does, packing the weights for oneDNN (``posttrain/rollout/packed.py``) and decoding the texts included.

    python benchmarks/rollout_vs_hf.py --repeats 3 [--drafts 8]       (needs: scripts/setup.sh embedded)
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import time


def arithmetic_questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"What is {rng.randint(10, 99)} {rng.choice('+-')} {rng.randint(10, 99)}? "
            "Reply with the final answer as 'The answer is N.'" for _ in range(n)]


def real_tokens(completions, eos_id: int) -> int:
    """Tokens up to and including each row's first EOS (transformers pads finished rows with pad = EOS)."""
    ended_before = (completions == eos_id).long().cumsum(1) - (completions == eos_id).long()
    return int((ended_before == 0).sum())


def run_hf(model, tokenizer, prompt_ids, group_size: int, temperature: float, max_new_tokens: int):
    import torch

    from posttrain.rollout.decoders import left_pad

    input_ids, pads = left_pad(prompt_ids, tokenizer.pad_token_id, "cpu")
    attention_mask = (torch.arange(input_ids.shape[1])[None] >= pads[:, None]).long()
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(
        do_sample=False)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             num_return_sequences=group_size, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **sampling)
    completions = out[:, input_ids.shape[1]:]
    return real_tokens(completions, tokenizer.eos_token_id), completions


def run_ours(model, tokenizer, prompt_ids, group_size: int, temperature: float, max_new_tokens: int, seed: int,
             draft_tokens: int, dtype: str | None = None):
    from posttrain.rollout import SamplingParams, sample

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            draft_tokens=draft_tokens, dtype=dtype)
    rollout = sample(model, tokenizer, prompt_ids, params, group_size=group_size)
    return rollout.num_generated_tokens, rollout.completion_ids


def measured(fn):
    """(result, wall seconds, CPU seconds, system CPU seconds, minor page faults) of one call. CPU time is the fairer
    figure when other jobs share the machine (it excludes time spent waiting for a core), wall time when it is idle."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = fn()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result, seconds, cpu, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="completions per call")
    parser.add_argument("--scenarios", default="sample,greedy,group")
    parser.add_argument("--drafts", type=int, default=0,
                        help="also run our engine with speculative decoding, this many draft tokens (draft_tokens)")
    parser.add_argument("--bf16", action="store_true", help="also run both engines in bfloat16")
    args = parser.parse_args()
    engines = ["ours", "hf"] + ["ours-drafts"] * bool(args.drafts) + ["ours-bf16", "hf-bf16"] * args.bf16
    # (ours, peer) rows of the table
    pairs = [("ours", "hf")] + [("ours-drafts", "hf")] * bool(args.drafts) + [
        ("ours-bf16", "hf"), ("ours-bf16", "hf-bf16")] * args.bf16

    import torch

    from posttrain.rollout.prompts import chat_prompt_ids
    from posttrain.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct", "float32", "cpu")
    model.eval()
    models = {"float32": model}
    if args.bf16:
        import copy

        models["bfloat16"] = copy.deepcopy(model).to(torch.bfloat16)
    settings = {"sample": (1, 1.0), "greedy": (1, 0.0), "group": (4, 1.0)}
    results = {}
    for scenario in args.scenarios.split(","):
        group_size, temperature = settings[scenario]
        questions = arithmetic_questions(args.batch // group_size)
        prompt_ids = [chat_prompt_ids(tokenizer, q) for q in questions]
        for repeat in range(args.repeats):
            for which in engines:  # interleaved: A, B, A, B on a shared 2-core machine
                if which.startswith("ours"):
                    drafts = args.drafts if which == "ours-drafts" else 0
                    dtype = "bfloat16" if which == "ours-bf16" else None
                    call = lambda: run_ours(model, tokenizer, prompt_ids, group_size, temperature,  # noqa: E731
                                            args.max_new_tokens, repeat, drafts, dtype)
                else:
                    torch.manual_seed(repeat)
                    peer = models["bfloat16" if which == "hf-bf16" else "float32"]
                    call = lambda: run_hf(peer, tokenizer, prompt_ids, group_size, temperature,  # noqa: E731
                                          args.max_new_tokens)
                (tokens, completions), seconds, cpu_s, system_s, faults = measured(call)
                results.setdefault((scenario, which), []).append(
                    {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                     "tokens_per_cpu_s": tokens / cpu_s, "system_s": system_s, "minor_faults": faults,
                     "completions": completions})
                print(f"{scenario:>6} repeat {repeat + 1} {which:>10}: {tokens:4d} tokens in {seconds:6.2f} s = "
                      f"{tokens / seconds:6.1f} tok/s, {tokens / cpu_s:6.1f} tok/CPU-s (sys {system_s:.2f} s, "
                      f"{faults} minor faults)", flush=True)
        if scenario == "greedy":
            for mine, peer in [("ours", "hf")] + [("ours-bf16", "hf-bf16"), ("ours-bf16", "hf")] * args.bf16:
                ours, hf = results[("greedy", mine)][0]["completions"], results[("greedy", peer)][0]["completions"]
                width = ours.shape[1]
                same = sum(torch.equal(o[o != tokenizer.pad_token_id], h[:width][h[:width] != tokenizer.pad_token_id])
                           for o, h in zip(ours, hf))
                print(f"greedy: {same}/{len(ours)} completions of {mine} identical to {peer}'s token for token")
            if args.drafts:
                drafted = results[("greedy", "ours-drafts")][0]["completions"]
                print(f"greedy: speculative and plain decoding identical: {torch.equal(ours, drafted)}")
        if scenario != "greedy" and args.drafts:  # the same seeds: the same samples, up to rounding
            same = sum(torch.equal(a, b) for r in range(args.repeats) for a, b in zip(
                results[(scenario, "ours")][r]["completions"], results[(scenario, "ours-drafts")][r]["completions"]))
            print(f"{scenario}: {same}/{args.repeats * args.batch} sampled completions identical with and without "
                  "drafts")

    print(f"\nmedians over {args.repeats} runs, batch {args.batch}, max {args.max_new_tokens} new tokens, "
          f"fp32 unless named, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"{'scenario':>8}{'ours':>12}{'peer':>9}{'ours tok/s':>12}{'peer tok/s':>11}{'ratio':>8}   "
          f"{'ours tok/CPU-s':>15}{'peer tok/CPU-s':>15}{'ratio':>8}{'ours tokens':>13}{'peer tokens':>12}")
    for scenario, (ours, peer) in ((s, pair) for s in args.scenarios.split(",") for pair in pairs):
        runs = results[(scenario, ours)], results[(scenario, peer)]
        rate = [statistics.median(r["tokens_per_s"] for r in by) for by in runs]
        cpu_rate = [statistics.median(r["tokens_per_cpu_s"] for r in by) for by in runs]
        count = [statistics.median(r["tokens"] for r in by) for by in runs]
        print(f"{scenario:>8}{ours:>12}{peer:>9}{rate[0]:>12.1f}{rate[1]:>11.1f}{rate[0] / rate[1]:>7.2f}x   "
              f"{cpu_rate[0]:>15.1f}{cpu_rate[1]:>15.1f}{cpu_rate[0] / cpu_rate[1]:>7.2f}x{count[0]:>13.0f}"
              f"{count[1]:>12.0f}")


if __name__ == "__main__":
    main()
