"""The rollout engine against independent references: a plain full forward, HF generate, independent per-row runs."""

import pytest
import torch

from posttrain.models import build_tiny_model
from posttrain.rollout import SamplingParams, sample
from posttrain.rollout.decoders import left_pad, supports_llama_path

PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [1, 3, 4, 5, 6, 8, 10, 11], [1, 44, 45]]


def rescored(model, rollout, temperature=1.0):
    """log softmax(logits / T) of each completion token and the argmax, from one full forward per row (no cache,
    no padding): the reference the trainer will compute."""
    logps, argmax = torch.zeros_like(rollout.logps), torch.zeros_like(rollout.completion_ids)
    with torch.no_grad():
        for row, prompt in enumerate(rollout.prompt_ids):
            n = int(rollout.completion_mask[row].sum())
            ids = torch.tensor(prompt + rollout.completion_ids[row, :n].tolist())[None]
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + n].float()
            argmax[row, :n] = logits.argmax(-1)
            logps[row, :n] = torch.log_softmax(logits / temperature, -1).gather(-1, ids[0, len(prompt):, None])[:, 0]
    return logps, argmax


def hf_greedy(model, prompts, max_new_tokens, pad_id):
    input_ids, pads = left_pad(prompts, pad_id, "cpu")
    mask = (torch.arange(input_ids.shape[1])[None] >= pads[:, None]).long()
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad_id, eos_token_id=None)
    return out[:, input_ids.shape[1]:]


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=0).eval()


def test_greedy_is_the_argmax_of_a_full_forward_and_matches_hf_generate(model, tokenizer):
    rollout = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.0, eos_token_ids=()))
    logps, argmax = rescored(model, rollout)
    assert torch.equal(rollout.completion_ids, argmax)
    assert torch.allclose(rollout.logps, logps, atol=1e-5)
    assert torch.equal(rollout.completion_ids, hf_greedy(model, PROMPTS, 6, tokenizer.pad_token_id))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 50, 0.9)])
def test_logps_are_log_softmax_of_temperature_scaled_logits(model, tokenizer, temperature, top_k, top_p):
    params = SamplingParams(max_new_tokens=5, temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    rollout = sample(model, tokenizer, PROMPTS, params, group_size=2)
    logps, _ = rescored(model, rollout, temperature)
    assert torch.allclose(rollout.logps, logps, atol=1e-5)
    if top_k:  # every token is among the top k of its (recomputed) distribution
        with torch.no_grad():
            ids = torch.tensor(rollout.prompt_ids[0] + rollout.completion_ids[0].tolist())[None]
            logits = model(input_ids=ids).logits[0, len(rollout.prompt_ids[0]) - 1 : -1]
        ranks = (logits > logits.gather(-1, rollout.completion_ids[0, :, None])).sum(-1)
        assert (ranks < top_k).all()


def test_prefix_shared_group_sampling_equals_independent_sampling(model, tokenizer):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=11)
    grouped = sample(model, tokenizer, PROMPTS, params, group_size=3)
    alone = sample(model, tokenizer, PROMPTS, params, group_size=3, batch_size=1, share_prefill=False)
    assert torch.equal(grouped.completion_ids, alone.completion_ids)
    assert torch.allclose(grouped.logps, alone.logps, atol=1e-5)
    assert grouped.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert grouped.prompt_ids[4] == PROMPTS[1]
    assert len({tuple(r) for r in grouped.completion_ids[:3].tolist()}) == 3  # a group's rows differ
    other_seed = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=6, seed=12), group_size=3)
    assert not torch.equal(grouped.completion_ids, other_seed.completion_ids)


def test_eos_ends_a_row_and_the_mask_covers_it(model, tokenizer):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5, eos_token_ids=())
    free = sample(model, tokenizer, PROMPTS, params)
    row = free.completion_ids[0].tolist()
    eos = next(t for i, t in enumerate(row) if i >= 2 and t not in row[:i])
    stopped = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=8, temperature=1.0, seed=5,
                                                                eos_token_ids=(eos,)))
    n = row.index(eos) + 1
    assert stopped.completion_mask[0].tolist() == [1] * n + [0] * (stopped.completion_ids.shape[1] - n)
    assert stopped.completion_ids[0, :n].tolist() == row[:n]
    assert (stopped.completion_ids[0, n:] == tokenizer.pad_token_id).all() and (stopped.logps[0, n:] == 0).all()
    assert not stopped.truncated[0] and free.truncated.all()
    for other in range(1, len(PROMPTS)):  # the other rows are untouched unless they drew the same token
        m = int(stopped.completion_mask[other].sum())
        assert stopped.completion_ids[other, :m].tolist() == free.completion_ids[other, :m].tolist()


def test_stop_strings_and_max_length_are_respected(model, tokenizer):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=2, eos_token_ids=())
    free = sample(model, tokenizer, PROMPTS, params)
    assert free.completion_ids.shape == (4, 10) and (free.completion_mask.sum(-1) == 10).all()
    assert free.num_generated_tokens == 40
    text = free.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.0, seed=2,
                                                                eos_token_ids=(), stop_strings=(stop,)))
    cut = text[: text.index(stop) + len(stop)]
    assert stopped.texts[0] == cut and not stopped.truncated[0]
    n = int(stopped.completion_mask[0].sum())
    assert stop in tokenizer.decode(free.completion_ids[0, :n])
    assert stop not in tokenizer.decode(free.completion_ids[0, : n - 1])
    assert stopped.completion_ids[0, :n].tolist() == free.completion_ids[0, :n].tolist()


def test_lora_adapters_are_applied_and_can_be_disabled(tokenizer):
    from peft import LoraConfig, get_peft_model

    from posttrain.models.lora import adapters_disabled

    greedy_params = SamplingParams(max_new_tokens=5, temperature=0.0)
    reference = sample(build_tiny_model(seed=0).eval(), tokenizer, PROMPTS, greedy_params)
    config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.5)
    lora = get_peft_model(build_tiny_model(seed=0), config).eval()
    assert supports_llama_path(lora)
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=1)
    adapted = sample(lora, tokenizer, PROMPTS, params)
    logps, _ = rescored(lora, adapted)
    assert torch.allclose(adapted.logps, logps, atol=1e-5)
    assert not torch.equal(sample(lora, tokenizer, PROMPTS, greedy_params).completion_ids, reference.completion_ids)
    with adapters_disabled(lora):
        disabled = sample(lora, tokenizer, PROMPTS, greedy_params)
    assert torch.equal(disabled.completion_ids, reference.completion_ids)
    lora.train()
    sample(lora, tokenizer, PROMPTS, greedy_params)
    assert lora.training  # the training mode comes back


def test_fast_llama_path_matches_the_generic_path(model, tokenizer):
    params = SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.95, seed=4)
    fast = sample(model, tokenizer, PROMPTS, params, group_size=2, backend="llama")
    generic = sample(model, tokenizer, PROMPTS, params, group_size=2, backend="hf")
    assert torch.equal(fast.completion_ids, generic.completion_ids)
    assert torch.allclose(fast.logps, generic.logps, atol=1e-5)


def test_qwen2_style_model_uses_the_fast_path_exactly(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(config).eval()
    assert supports_llama_path(qwen)
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=0, eos_token_ids=())
    fast = sample(qwen, tokenizer, PROMPTS, params, backend="llama")
    generic = sample(qwen, tokenizer, PROMPTS, params, backend="hf")
    assert torch.equal(fast.completion_ids, generic.completion_ids)


def test_generic_path_for_a_non_llama_model(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=49152, n_positions=128, n_embd=64, n_layer=2, n_head=4, eos_token_id=2,
                        bos_token_id=1)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(config).eval()
    assert not supports_llama_path(gpt2)
    greedy = sample(gpt2, tokenizer, PROMPTS, SamplingParams(max_new_tokens=5, temperature=0.0, eos_token_ids=()))
    assert torch.equal(greedy.completion_ids, hf_greedy(gpt2, PROMPTS, 5, tokenizer.pad_token_id))
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=9)
    grouped = sample(gpt2, tokenizer, PROMPTS, params, group_size=2)
    logps, _ = rescored(gpt2, grouped)
    assert torch.allclose(grouped.logps, logps, atol=1e-5)
    alone = sample(gpt2, tokenizer, PROMPTS, params, group_size=2, batch_size=1, share_prefill=False)
    assert torch.equal(grouped.completion_ids, alone.completion_ids)


def test_weights_updated_between_calls_are_used(tokenizer):
    model = build_tiny_model(seed=0).eval()
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=0)
    before = sample(model, tokenizer, PROMPTS, params)
    with torch.no_grad():  # what an optimizer step does: in-place updates
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = sample(model, tokenizer, PROMPTS, params)
    logps, _ = rescored(model, after)
    assert torch.allclose(after.logps, logps, atol=1e-5)
    assert not torch.allclose(before.logps, after.logps)
    assert after.texts == tokenizer.batch_decode(after.completion_ids, skip_special_tokens=True)
