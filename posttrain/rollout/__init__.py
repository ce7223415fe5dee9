"""The rollout engine: fast batched sampling with a KV cache, groups sharing their prompt's prefill; text generation
on top of it; reward functions and scorers; judges (``posttrain.rollout.judges``, built from a config by
``judge_specs.build_judge``), AI-labelled preference pairs (``label``) and best-of-n sampling (``best_of_n``).

    from posttrain.rollout import SamplingParams, sample, chat_prompts
    prompt_ids = chat_prompts(tokenizer, questions)
    rollout = sample(model, tokenizer, prompt_ids, SamplingParams(temperature=1.0), group_size=8)
"""

from posttrain.rollout.generate import generate
from posttrain.rollout.prompts import chat_prompt_ids, chat_prompts
from posttrain.rollout.rewards import (
    CombinedReward,
    RewardModelScorer,
    RewardSpec,
    WeightedReward,
    build_reward,
    load_function,
)
from posttrain.rollout.sampling import Rollout, SamplingParams, sample

__all__ = [
    "CombinedReward",
    "RewardModelScorer",
    "RewardSpec",
    "Rollout",
    "SamplingParams",
    "WeightedReward",
    "build_reward",
    "chat_prompt_ids",
    "chat_prompts",
    "generate",
    "load_function",
    "sample",
]
