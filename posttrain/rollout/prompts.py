"""Prompt formatting for generation: a single-turn chat prompt as token ids, ending with the assistant's generation
prompt (plain text when the tokenizer has no chat template)."""

from __future__ import annotations


def chat_prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a single-turn chat prompt ending with the assistant's generation prompt (or plain text when the
    tokenizer has no chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_prompts(tokenizer, prompts: list[str], system: str | None = None) -> list[list[int]]:
    """Token ids of single-turn chat prompts ending with the assistant's generation prompt."""
    return [chat_prompt_ids(tokenizer, prompt, system) for prompt in prompts]
