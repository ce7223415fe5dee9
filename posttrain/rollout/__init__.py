"""The rollout engine: fast batched sampling with a KV cache, groups sharing their prompt's prefill.

    from posttrain.rollout import SamplingParams, sample, chat_prompts
    prompt_ids = chat_prompts(tokenizer, questions)
    rollout = sample(model, tokenizer, prompt_ids, SamplingParams(temperature=1.0), group_size=8)
"""

from posttrain.rollout.sampling import Rollout, SamplingParams, chat_prompts, sample

__all__ = ["Rollout", "SamplingParams", "chat_prompts", "sample"]
