import pytest

from posttrain.data import DataConfig, Row, tokenize_sft
from posttrain.errors import DataError


def _masked_text(tokenizer, example):
    return tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if m])


def test_chat_completion_mask_covers_exactly_the_reply(tokenizer):
    rows = [Row({"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5."}, "r0")]
    (example,), _ = tokenize_sft(rows, "prompt_completion", tokenizer, DataConfig())
    assert _masked_text(tokenizer, example) == "2 + 3 = 5.<|im_end|>\n"
    unmasked = tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if not m])
    assert unmasked.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")


def test_plain_completion_mask_and_eos(tokenizer):
    rows = [Row({"prompt": "Q: hi\nA:", "completion": " hello"}, "r0")]
    (example,), _ = tokenize_sft(rows, "prompt_completion", tokenizer, DataConfig(apply_chat_template=False))
    assert _masked_text(tokenizer, example) == " hello<|im_end|>"
    assert tokenizer.decode(example.input_ids) == "Q: hi\nA: hello<|im_end|>"


def test_text_format_trains_on_every_token(tokenizer):
    (example,), _ = tokenize_sft([Row({"text": "just text"}, "r0")], "text", tokenizer, DataConfig())
    assert all(example.loss_mask)


def test_messages_mask_every_assistant_turn(tokenizer):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    (example,), _ = tokenize_sft([Row({"messages": messages}, "r0")], "messages", tokenizer, DataConfig())
    assert _masked_text(tokenizer, example) == "hello<|im_end|>\n4<|im_end|>\n"


def test_completion_only_loss_off_trains_on_prompt_too(tokenizer):
    rows = [Row({"prompt": "a", "completion": "b"}, "r0")]
    (example,), _ = tokenize_sft(rows, "prompt_completion", tokenizer, DataConfig(completion_only_loss=False))
    assert all(example.loss_mask)


def test_truncation_is_counted(tokenizer):
    rows = [Row({"prompt": "word " * 50, "completion": "reply " * 50}, "r0"), Row({"prompt": "a", "completion": "b"}, "r1")]
    config = DataConfig(max_length=60, max_prompt_length=40)
    examples, stats = tokenize_sft(rows, "prompt_completion", tokenizer, config)
    assert len(examples[0]) == 60 and stats.truncated_prompts == 1 and stats.truncated_completions == 1
    assert sum(examples[0].loss_mask) == 20  # 40 prompt tokens kept, 20 completion tokens fit


def test_prompt_longer_than_max_length_is_an_error_naming_the_row(tokenizer):
    rows = [Row({"prompt": "word " * 100, "completion": "b"}, "data.jsonl:7")]
    with pytest.raises(DataError, match=r"data\.jsonl:7: the prompt alone is \d+ tokens.*max_length=32"):
        tokenize_sft(rows, "prompt_completion", tokenizer, DataConfig(max_length=32))
