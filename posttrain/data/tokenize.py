"""Text -> token ids with a loss mask: chat templates, completion-only loss, truncation.

Token in, token out: a prompt and its completion are tokenized once here, and the tokenized prompt must be a prefix
of prompt + completion (a template that rewrites earlier turns breaks this; we say so instead of training on a
misaligned mask).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from posttrain.data.formats import DataConfig
from posttrain.data.sources import Row
from posttrain.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token carries loss
    where: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TruncationStats:
    rows: int = 0
    truncated_prompts: int = 0
    truncated_completions: int = 0
    examples: list[str] = field(default_factory=list)

    def report(self, name: str) -> str:
        return (
            f"{name}: {self.rows} rows; {self.truncated_prompts} prompts truncated to max_prompt_length, "
            f"{self.truncated_completions} sequences truncated to max_length"
        )


def uses_chat_template(tokenizer, config: DataConfig, fmt: str) -> bool:
    if fmt == "messages":
        return True
    if fmt == "text":
        return False
    if config.apply_chat_template is None:
        return bool(getattr(tokenizer, "chat_template", None))
    return config.apply_chat_template


def as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


BASE_ROLES = ("system", "user", "assistant")
OPTIONAL_ROLES = ("tool", "ipython", "developer", "function")  # supported where the template names them


def check_roles(tokenizer, messages: list[dict], where: str) -> None:
    """Refuse a role the chat template does not know (many templates would print any role verbatim)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    supported = BASE_ROLES + tuple(role for role in OPTIONAL_ROLES if role in template)
    for i, message in enumerate(messages):
        if message["role"] not in supported:
            raise DataError(f"{where}: message {i} has role {message['role']!r}; the chat template supports "
                            f"{', '.join(supported)}")


def encode_prompt_completion(tokenizer, prompt, completion, chat: bool, where: str = "") -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``completion`` such that prompt_ids + completion_ids is the full sequence.

    With a chat template the prompt ends with the generation prompt (``<|im_start|>assistant\\n``) and the
    completion ends with the template's end-of-turn; without one the completion ends with EOS.
    """
    if not chat:
        if isinstance(prompt, list) or isinstance(completion, list):
            raise DataError(f"{where}: conversational data needs a tokenizer with a chat template")
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return prompt_ids, completion_ids
    prompt_messages = as_messages(prompt, "user")
    check_roles(tokenizer, prompt_messages + as_messages(completion, "assistant"), where)
    prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt_messages + as_messages(completion, "assistant"), tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise DataError(
            f"{where}: the chat template's tokenized prompt is not a prefix of prompt + completion, so the "
            "completion mask would be wrong; use a template that appends turns without rewriting earlier ones"
        )
    return prompt_ids, full_ids[len(prompt_ids) :]


def encode_messages(tokenizer, messages: list[dict], where: str = "") -> tuple[list[int], list[int]]:
    """Ids and loss mask of a conversation: every assistant turn carries loss, everything else does not."""
    check_roles(tokenizer, messages, where)
    ids: list[int] = []
    mask: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        before_ids = tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
        through_ids = tokenizer(through, add_special_tokens=False)["input_ids"]
        if through_ids[: len(ids)] != ids or through_ids[: len(before_ids)] != before_ids:
            raise DataError(f"{where}: the chat template rewrites earlier turns, so turn {i} cannot be masked exactly")
        mask += [0] * (len(before_ids) - len(ids)) + [1] * (len(through_ids) - len(before_ids))
        ids = through_ids
    if not ids:
        raise DataError(f"{where}: the conversation has no assistant message to learn from")
    full = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    if full[: len(ids)] != ids:
        raise DataError(f"{where}: the chat template rewrites earlier turns")
    return full, mask + [0] * (len(full) - len(ids))


def tokenize_sft(rows: list[Row], fmt: str, tokenizer, config: DataConfig) -> tuple[list[Example], TruncationStats]:
    """Tokenize SFT rows (text, prompt_completion or messages) into examples with loss masks, truncating as configured."""
    chat = uses_chat_template(tokenizer, config, fmt)
    stats = TruncationStats(rows=len(rows))
    examples = []
    for row in rows:
        if fmt == "text":
            ids = tokenizer(row.values["text"], add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
            prompt_ids, completion_ids = [], ids
        elif fmt == "messages":
            ids, mask = encode_messages(tokenizer, row.values["messages"], row.where)
            first_loss = mask.index(1)
            prompt_ids, completion_ids = ids[:first_loss], ids[first_loss:]
        else:
            prompt_ids, completion_ids = encode_prompt_completion(
                tokenizer, row.values["prompt"], row.values["completion"], chat, row.where
            )
            mask = None
        if fmt != "messages":
            mask = [0] * len(prompt_ids) + [1] * len(completion_ids)
        ids, mask = truncate(prompt_ids, completion_ids, mask, config, stats, row.where)
        if not config.completion_only_loss:
            mask = [1] * len(ids)
        examples.append(Example(ids, mask, row.where))
    if stats.truncated_prompts or stats.truncated_completions:
        log.warning(stats.report("tokenized"))
    return examples, stats


def truncate(prompt_ids, completion_ids, mask, config: DataConfig, stats: TruncationStats, where: str):
    """Keep the end of long prompts (``max_prompt_length``), then cut the sequence at ``max_length``."""
    ids = prompt_ids + completion_ids
    if config.max_prompt_length is not None and len(prompt_ids) > config.max_prompt_length:
        cut = len(prompt_ids) - config.max_prompt_length
        ids, mask = ids[cut:], mask[cut:]
        prompt_len = config.max_prompt_length
        stats.truncated_prompts += 1
    else:
        prompt_len = len(prompt_ids)
    if prompt_len >= config.max_length and prompt_len > 0:
        raise DataError(
            f"{where}: the prompt alone is {prompt_len} tokens, which leaves no room for the completion within "
            f"max_length={config.max_length}; raise max_length or set max_prompt_length"
        )
    if len(ids) > config.max_length:
        ids, mask = ids[: config.max_length], mask[: config.max_length]
        stats.truncated_completions += 1
    return ids, mask
