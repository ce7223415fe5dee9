"""Completions that share their prompt, scored with the prompt run once: the same values as padded rows."""

import pytest
import torch

from posttrain.data.batching import collate_sequences
from posttrain.data.shared_prompts import with_shared_prompts
from posttrain.models import build_tiny_model
from posttrain.models.forward import token_logps


def groups_of_rows(seed=0):
    """3 prompts (lengths 5, 3, 7) with 3, 2 and 3 completions of 1 to 6 tokens, rows in group order."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 250, (n,), generator=g).tolist() for n in (5, 3, 7)]
    sequences, prompt_index = [], []
    for k, count in enumerate((3, 2, 3)):
        for _ in range(count):
            length = int(torch.randint(1, 7, (1,), generator=g))
            sequences.append((prompts[k], torch.randint(3, 250, (length,), generator=g).tolist()))
            prompt_index.append(k)
    rows = collate_sequences(sequences, pad_token_id=0)
    return rows, torch.tensor(prompt_index), torch.tensor([len(p) for p, _ in sequences])


@pytest.mark.parametrize("attention, max_segment", [("sdpa", 1024), ("eager", 1024), ("sdpa", 12)])
def test_log_probs_entropy_and_gradients_equal_padded_rows(attention, max_segment, monkeypatch):
    """max_segment 12: groups split into several segments (each as long as the longest padded row at most)."""
    monkeypatch.setattr("posttrain.data.shared_prompts.MAX_SEGMENT", max_segment)
    model = build_tiny_model(seed=0, vocab_size=256)
    model.config._attn_implementation = attention
    rows, prompt_index, prompt_lengths = groups_of_rows()
    rows["loss_mask"][4] = 0  # a truncated completion masked out of the loss: no target in either layout
    packed = with_shared_prompts(rows, prompt_index, prompt_lengths)
    assert packed["packed_input_ids"].numel() < rows["input_ids"].numel()
    assert packed["packed_input_ids"].shape[1] <= max(max_segment, rows["input_ids"].shape[1])
    weights = torch.randn(rows["input_ids"].shape[0], rows["input_ids"].shape[1] - 1,
                          generator=torch.Generator().manual_seed(1))

    def run(batch):
        model.zero_grad()
        stats, mask = token_logps(model, batch, with_entropy=True)
        (stats.logps * weights * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return stats, mask, grads

    padded_stats, padded_mask, padded_grads = run(rows)
    packed_stats, packed_mask, packed_grads = run(packed)
    assert torch.equal(padded_mask, packed_mask)
    assert padded_mask[4].sum() == 0 and padded_mask.sum() > 10
    torch.testing.assert_close(packed_stats.logps, padded_stats.logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_stats.entropy, padded_stats.entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(packed_stats.is_argmax, padded_stats.is_argmax)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_completions_do_not_see_each_other():
    """Changing one completion of a group leaves its siblings' log-probs unchanged (they attend to the prompt and
    to themselves only); changing the prompt changes them all."""
    model = build_tiny_model(seed=0, vocab_size=256)
    rows, prompt_index, prompt_lengths = groups_of_rows()
    base = token_logps(model, with_shared_prompts(rows, prompt_index, prompt_lengths))[0].logps
    changed = {k: v.clone() for k, v in rows.items()}
    length = int(changed["attention_mask"][0].sum())
    changed["input_ids"][0, 5:length] = (changed["input_ids"][0, 5:length] + 7) % 250 + 3  # row 0's completion
    after = token_logps(model, with_shared_prompts(changed, prompt_index, prompt_lengths))[0].logps
    assert torch.equal(after[1:], base[1:])
    assert not torch.equal(after[0], base[0])


def test_rows_of_one_group_must_share_their_prompt():
    rows, prompt_index, prompt_lengths = groups_of_rows()
    with pytest.raises(ValueError, match="prompt index 0 have different prompts"):
        with_shared_prompts(rows, torch.tensor([0, 0, 0, 0, 0, 2, 2, 2]), prompt_lengths)
