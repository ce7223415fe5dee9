import math

import torch

from posttrain.math import sft_nll_sum


def test_sft_nll_sum_hand_computed():
    """logps of the completion tokens are ln(0.5), ln(0.25) and ln(1) (the prompt token's ln(0.1) is masked out):
    summed NLL = ln 2 + ln 4 + 0 = 3 ln 2 ~= 2.0794; mean over the 3 completion tokens = ln 2."""
    logps = torch.log(torch.tensor([[0.1, 0.5, 0.25, 1.0]]))
    mask = torch.tensor([[0, 1, 1, 1]])
    total = sft_nll_sum(logps, mask)
    assert math.isclose(total.item(), 3 * math.log(2), rel_tol=1e-6)
    assert math.isclose(total.item() / mask.sum().item(), math.log(2), rel_tol=1e-6)


def test_sft_nll_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(0, 11, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    logps = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    reference = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
    torch.testing.assert_close(sft_nll_sum(logps, mask), reference)
