"""Speculative decoding is exact: whatever the drafts, the tokens and log-probs are those of plain decoding."""

from dataclasses import replace

import pytest
import torch

from posttrain.models import build_tiny_model
from posttrain.rollout import SamplingParams, sample
from posttrain.rollout import sampling as sampling_module
from posttrain.rollout.decoders import LlamaDecoder
from posttrain.rollout.drafts import PromptLookupDrafter

PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [1, 3, 4, 5, 6, 8, 10, 11], [1, 44, 45]]


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=0).eval()


@pytest.fixture
def wide_verify(monkeypatch):
    """Let every batch size draft (the default budget gives 12 rows no drafts)."""
    monkeypatch.setattr(sampling_module, "VERIFY_POSITIONS", 256)


@pytest.fixture
def forwards(monkeypatch):
    """Counts decode forwards and the tokens fed to them."""
    counts = {"steps": 0, "fed": 0}
    original = LlamaDecoder.step

    def counted(self, tokens):
        counts["steps"] += 1
        counts["fed"] += tokens.numel()
        return original(self, tokens)

    monkeypatch.setattr(LlamaDecoder, "step", counted)
    return counts


def use_drafter(monkeypatch, propose):
    """Replace prompt lookup by ``propose(output_row, completion_so_far, count) -> drafts``."""

    class Drafter(PromptLookupDrafter):
        def start(self, row, prompt):
            super().start(row, prompt)
            self.prompt_length = getattr(self, "prompt_length", {})
            self.prompt_length[row] = len(prompt)

        def propose(self, row, count):
            return propose(row, self.history[row][self.prompt_length[row]:], count)[:count]

    monkeypatch.setattr(sampling_module, "PromptLookupDrafter", Drafter)


def assert_same(a, b):
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask) and torch.equal(a.truncated, b.truncated)
    assert torch.allclose(a.logps, b.logps, atol=1e-5)
    assert a.texts == b.texts


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    drafter = PromptLookupDrafter(max_ngram=3, min_ngram=1)
    drafter.start(0, [7, 1, 2, 3, 4, 1, 2, 5, 1])
    assert drafter.propose(0, 3) == [2, 5, 1]  # suffix (1,): latest earlier 1 is at index 5, followed by 2, 5, 1
    drafter.extend(0, [2])
    assert drafter.propose(0, 4) == [5, 1, 2]  # (5, 1, 2) is new; (1, 2) last occurred at 5..6: 5, 1, 2
    drafter.extend(0, [3])
    assert drafter.propose(0, 2) == [4, 1]  # (1, 2, 3) occurred at 1..3, followed by 4, 1
    drafter.start(1, [9])
    assert drafter.propose(1, 3) == []  # nothing to look up
    assert drafter.propose(0, 0) == []
    bigrams = PromptLookupDrafter(max_ngram=3, min_ngram=2)
    bigrams.start(0, [7, 1, 2, 3, 4, 1, 2, 5, 1])
    assert bigrams.propose(0, 3) == []  # only the unigram (1,) recurs
    bigrams.extend(0, [2])
    assert bigrams.propose(0, 4) == [5, 1, 2]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["oracle", "wrong", "mixed", "lookup"])
def test_any_drafts_give_the_plain_tokens(model, tokenizer, monkeypatch, wide_verify, forwards, temperature, kind):
    params = SamplingParams(max_new_tokens=10, temperature=temperature, seed=7, eos_token_ids=(), draft_tokens=0)
    plain = sample(model, tokenizer, PROMPTS, params, group_size=2)
    plain_steps = forwards["steps"]
    reference = plain.completion_ids.tolist()
    if kind == "oracle":  # the tokens plain decoding chose: all kept
        use_drafter(monkeypatch, lambda row, so_far, n: reference[row][len(so_far):])
    elif kind == "wrong":  # never the chosen token: all rejected
        use_drafter(monkeypatch, lambda row, so_far, n: [(t + 1) % 49152 for t in reference[row][len(so_far):]])
    elif kind == "mixed":  # rows advance at different rates: a row near its end is padded to others' drafts
        use_drafter(monkeypatch, lambda row, so_far, n: [t + row % 2 for t in reference[row][len(so_far):]][
            : n if row % 2 else 3])  # even rows: 1, 5, 9 tokens while odd rows still draft 4
    forwards["steps"] = 0
    speculative = sample(model, tokenizer, PROMPTS, replace(params, draft_tokens=4),
                         group_size=2)
    assert_same(speculative, plain)
    if kind == "oracle":  # 4 drafts + 1 chosen per forward: 10 tokens in 2 forwards after the prefill
        assert forwards["steps"] == 2 and plain_steps == 9
    if kind == "wrong":
        assert forwards["steps"] == plain_steps


def test_a_kept_draft_that_ends_the_row_ends_it(model, tokenizer, monkeypatch, wide_verify):
    free = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=8, temperature=1.0, seed=5,
                                                            eos_token_ids=(), draft_tokens=0))
    row = free.completion_ids[0].tolist()
    eos = next(t for i, t in enumerate(row) if i >= 2 and t not in row[:i])
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5, eos_token_ids=(eos,), draft_tokens=0)
    stopped = sample(model, tokenizer, PROMPTS, params)
    reference = free.completion_ids.tolist()  # drafts run on past the EOS
    use_drafter(monkeypatch, lambda r, so_far, n: reference[r][len(so_far):])
    speculative = sample(model, tokenizer, PROMPTS, replace(params, draft_tokens=6))
    assert_same(speculative, stopped)
    assert int(speculative.completion_mask[0].sum()) == row.index(eos) + 1

    text = free.texts[1]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5, eos_token_ids=(), stop_strings=(stop,),
                            draft_tokens=0)
    plain = sample(model, tokenizer, PROMPTS, params)
    speculative = sample(model, tokenizer, PROMPTS, replace(params, draft_tokens=6))
    assert_same(speculative, plain)
    assert plain.texts[1].endswith(stop) and not plain.truncated[1]


def test_the_default_budget_drafts_only_for_few_rows(model, tokenizer, forwards):
    params = SamplingParams(max_new_tokens=6, temperature=0.0, eos_token_ids=(), draft_tokens=8)
    sample(model, tokenizer, PROMPTS * 4, params)  # 16 rows: one token per row per forward
    assert forwards["fed"] == 16 * 5
    forwards["fed"] = 0
    plain = sample(model, tokenizer, PROMPTS[:1], replace(params, draft_tokens=0))
    one = sample(model, tokenizer, PROMPTS[:1], params)
    assert_same(one, plain)


def test_the_generic_path_decodes_without_drafts(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_positions=128, n_embd=64, n_layer=2, n_head=4)).eval()
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, eos_token_ids=())
    assert_same(sample(gpt2, tokenizer, PROMPTS[:1], params),
                sample(gpt2, tokenizer, PROMPTS[:1], replace(params, draft_tokens=0)))
