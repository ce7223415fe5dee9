"""Rollouts in another dtype than the model's: bfloat16 decoding of a float32 model, asked for or under autocast.

bfloat16 is a rounded model, so nothing here is exact against float32: its tokens' log-probs must be close to the
float32 model's log-probs of the same tokens, yet not equal (the decoder did compute in bfloat16)."""

import pytest
import torch

from posttrain.models import build_tiny_model
from posttrain.rollout import SamplingParams, sample
from posttrain.rollout.decoders import LlamaDecoder

from tests.rollout.test_sampling import PROMPTS, rescored

BF16 = SamplingParams(max_new_tokens=6, temperature=1.0, seed=4, dtype="bfloat16", eos_token_ids=())


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=0).eval()


def assert_rounded_but_close(rollout, model):
    logps, _ = rescored(model, rollout)
    error = (rollout.logps - logps).abs()
    assert error.max() < 0.1, error.max()
    assert error.max() > 1e-4  # it did not decode in float32
    assert rollout.logps.dtype == torch.float32


def test_bfloat16_decoding_is_the_float32_model_rounded(model, tokenizer):
    rollout = sample(model, tokenizer, PROMPTS, BF16, group_size=2)
    assert_rounded_but_close(rollout, model)
    decoder = LlamaDecoder(model, 8, 32, torch.bfloat16)
    assert decoder.cache.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is untouched


def test_autocast_decodes_in_its_dtype(model, tokenizer):
    """The engine samples inside autocast under precision=bf16: the decoder computes in bfloat16 itself (an autocast
    around oneDNN's packed float32 weights would fail), the same tokens as asking for bfloat16."""
    asked = sample(model, tokenizer, PROMPTS, BF16, group_size=2)
    params = SamplingParams(**{**BF16.__dict__, "dtype": None})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sample(model, tokenizer, PROMPTS, params, group_size=2)
    assert torch.equal(inside.completion_ids, asked.completion_ids)
    assert torch.equal(inside.logps, asked.logps)


def test_bfloat16_through_lora_layers_and_the_generic_path(tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    lora = get_peft_model(build_tiny_model(seed=1), config).eval()
    assert_rounded_but_close(sample(lora, tokenizer, PROMPTS, BF16), lora)

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                      eos_token_id=2, bos_token_id=1)).eval()
    assert_rounded_but_close(sample(gpt2, tokenizer, PROMPTS, BF16, backend="hf"), gpt2)


def test_an_unknown_dtype_is_named(model, tokenizer):
    with pytest.raises(ValueError, match="'bf32'"):
        sample(model, tokenizer, PROMPTS, SamplingParams(dtype="bf32"))
