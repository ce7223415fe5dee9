"""Text generation for the CLI, the demo and evaluation: chat template applied, batched, optionally streamed.

Batched generation runs on the rollout engine (``posttrain.rollout.sampling``: preallocated KV cache, shared prompt
prefill, finished rows dropped), faster than transformers' ``generate`` (``benchmarks/rollout_vs_hf.py``,
docs/benchmarks.md); greedy output is the same token for token. Streaming to the terminal uses
transformers' ``generate`` with a ``TextStreamer``.
"""

from __future__ import annotations

import torch

from posttrain.rollout.prompts import chat_prompt_ids
from posttrain.rollout.sampling import SamplingParams, sample


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 16, system: str | None = None, streamer=None) -> list[str]:
    """Completions for ``prompts`` (greedy when temperature is 0), decoded without special tokens.

    Sampling (temperature > 0) draws its seed from torch's global generator: ``torch.manual_seed`` makes it
    repeatable, and two calls give different samples, as with transformers' ``generate``.
    """
    if streamer is not None:
        return _hf_generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, batch_size, system, streamer)
    seed = int(torch.randint(2**31 - 1, ())) if temperature > 0 else 0
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    prompt_ids = [chat_prompt_ids(tokenizer, p, system) for p in prompts]
    return sample(model, tokenizer, prompt_ids, params, batch_size=batch_size).texts


def self_consistent_generate(model, tokenizer, prompt: str, k: int, max_new_tokens: int = 256,
                             temperature: float = 0.7, top_p: float = 1.0, system: str | None = None) -> dict:
    """Self-consistency (Wang et al. 2023): k sampled completions of ``prompt``, the final answer parsed from each
    (``posttrain.tasks.arithmetic.extract_answer``) and their majority vote (``posttrain.tasks.voting``)."""
    from posttrain.errors import ConfigError
    from posttrain.tasks.arithmetic import extract_answer
    from posttrain.tasks.voting import majority_vote

    if temperature <= 0 or k < 1:
        raise ConfigError(f"self-consistency samples k >= 1 completions at a temperature > 0 (e.g. 0.7); got k={k}, "
                          f"temperature={temperature}")
    texts = generate(model, tokenizer, [prompt] * k, max_new_tokens, temperature, top_p, system=system)
    answers = [extract_answer(text) for text in texts]
    answer, votes = majority_vote(answers)
    return {"answer": answer, "votes": votes, "k": k,
            "samples": [{"text": text, "answer": parsed} for text, parsed in zip(texts, answers)]}


@torch.no_grad()
def _hf_generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, batch_size, system, streamer):
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    for start in range(0, len(prompts), batch_size):
        encoded = [chat_prompt_ids(tokenizer, p, system) for p in prompts[start : start + batch_size]]
        width = max(map(len, encoded))
        # left padding: every prompt ends at the same position, where generation starts
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, streamer=streamer,
            top_k=None, **sampling,
        )
        outputs += tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return outputs


def stream_one(model, tokenizer, prompt: str, max_new_tokens: int = 256, temperature: float = 0.0,
               system: str | None = None) -> str:
    """Generate for one prompt, printing tokens to stdout as they come."""
    from transformers import TextStreamer

    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    return generate(model, tokenizer, [prompt], max_new_tokens, temperature, system=system, streamer=streamer)[0]
