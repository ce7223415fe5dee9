"""Token choice from logits: filters and the inverse-CDF draw against hand-computed values."""

import torch

from posttrain.rollout.choice import choose_tokens, inverse_cdf_choice, row_keys, top_k_top_p_filter, uniforms


def test_inverse_cdf_draw_follows_the_weights_and_never_picks_zero_weight():
    weights = torch.zeros(1, 300)  # 300 columns: two blocks of 256, the second one padded
    weights[0, [3, 100, 255, 256, 299]] = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5])
    n = 8000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # an even grid: counts are exact up to one per column
    columns = inverse_cdf_choice(weights.expand(n, -1), u)
    counts = torch.bincount(columns, minlength=300).double()
    expected = weights[0].double() / weights.sum() * n
    assert set(columns.tolist()) == {3, 100, 255, 256, 299}
    assert (counts - expected).abs().max() <= 1


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass_and_top_k_the_k_largest():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    kept, ids = top_k_top_p_filter(probs, top_p=0.7)
    assert ids.tolist() == [[1, 3, 2, 0]] and torch.allclose(kept, torch.tensor([[0.5, 0.3, 0.0, 0.0]]))
    kept, ids = top_k_top_p_filter(probs, top_k=3)
    assert ids.tolist() == [[1, 3, 2]] and torch.allclose(kept, torch.tensor([[0.5, 0.3, 0.15]]))
    # top-p applies to the top-k distribution renormalised: 0.5 / 0.95 < 0.6 <= 0.8 / 0.95
    kept, _ = top_k_top_p_filter(probs, top_k=3, top_p=0.6)
    assert torch.allclose(kept, torch.tensor([[0.5, 0.3, 0.0]]))
    assert top_k_top_p_filter(probs)[1] is None


def test_uniforms_depend_only_on_the_row_key_and_step():
    keys = row_keys(7, torch.tensor([0, 0, 1, 5]), torch.tensor([0, 1, 0, 3]))
    assert len(set(keys.tolist())) == 4
    again = row_keys(7, torch.tensor([5, 0]), torch.tensor([3, 1]))
    assert torch.equal(uniforms(again, 11), uniforms(keys[[3, 1]], 11))
    many = uniforms(row_keys(0, torch.arange(20000), torch.zeros(20000)), 3)
    assert 0 <= many.min() and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.01
    assert not torch.equal(uniforms(keys, 0), uniforms(keys, 1))


def test_choose_tokens_logps_are_temperature_scaled_and_untruncated():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.5]])
    keys = row_keys(0, torch.arange(2), torch.zeros(2))
    tokens, logps = choose_tokens(logits, keys, 0, temperature=0.5, top_k=2)
    assert set(tokens.tolist()[:1]) <= {0, 1} and set(tokens.tolist()[1:]) <= {1, 2}
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logps, expected)
    greedy, greedy_logps = choose_tokens(logits, keys, 0, temperature=0.0)
    assert greedy.tolist() == [0, 1]
    assert torch.allclose(greedy_logps, torch.log_softmax(logits, -1).gather(-1, greedy[:, None]).squeeze(-1))
