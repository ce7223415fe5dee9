"""Chunked log-probs against the naive full-logits computation: values, entropy, argmax and gradients."""

import math

import pytest
import torch

from posttrain.math import chunked_token_logps, masked_mean, masked_sum, naive_token_logps, sequence_token_logps


def _naive(hidden, weight, bias, targets):
    logits = hidden @ weight.t() + (bias if bias is not None else 0)
    logps = naive_token_logps(logits, targets)
    probs = torch.softmax(logits, -1)
    entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    return logps, entropy, logits.argmax(-1) == targets


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_matches_naive_values_and_gradients(chunk_size, with_bias):
    torch.manual_seed(0)
    n, h, v = 10, 6, 17
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,))
    upstream = torch.randn(n, dtype=torch.float64)

    ref_logps, ref_entropy, ref_argmax = _naive(hidden, weight, bias, targets)
    ref_grads = torch.autograd.grad((ref_logps * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))

    out = chunked_token_logps(hidden, weight, targets, bias, chunk_size=chunk_size, with_entropy=True)
    grads = torch.autograd.grad((out.logps * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))

    torch.testing.assert_close(out.logps.double(), ref_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.entropy.double(), ref_entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.is_argmax, ref_argmax)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_uniform_logits_give_log_vocab():
    """Zero weights give uniform probabilities: logp = -ln V and entropy = ln V exactly."""
    hidden, weight = torch.randn(4, 3), torch.zeros(5, 3)
    out = chunked_token_logps(hidden, weight, torch.tensor([0, 1, 2, 4]), with_entropy=True)
    torch.testing.assert_close(out.logps, torch.full((4,), -math.log(5)))
    torch.testing.assert_close(out.entropy, torch.full((4,), math.log(5)))


def test_sequence_logps_only_scores_masked_positions_and_matches_naive():
    torch.manual_seed(1)
    b, t, h, v = 2, 6, 4, 9
    hidden = torch.randn(b, t, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    input_ids = torch.randint(0, v, (b, t))
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    stats, mask = sequence_token_logps(hidden, weight, input_ids, loss_mask, chunk_size=2)
    full = naive_token_logps(hidden[:, :-1] @ weight.t(), input_ids[:, 1:])
    assert torch.equal(mask, loss_mask[:, 1:].bool())
    torch.testing.assert_close(stats.logps, full * mask)
    g1 = torch.autograd.grad(stats.logps.sum(), hidden)[0]
    g2 = torch.autograd.grad((full * mask).sum(), hidden)[0]
    torch.testing.assert_close(g1, g2)


def test_masked_mean_and_sum():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 0, 1], [0, 0, 0]])
    assert masked_sum(x, m).item() == 4.0
    assert masked_mean(x, m).item() == 2.0
    torch.testing.assert_close(masked_mean(x, m, dim=1), torch.tensor([2.0, 0.0]))


@pytest.mark.parametrize("existing_grad", [False, True])
def test_in_place_weight_gradient_equals_the_returned_one(existing_grad):
    """accumulate_grad_in_place adds into weight.grad what autograd would have accumulated there."""
    torch.manual_seed(2)
    hidden = torch.randn(9, 5, requires_grad=True)
    targets = torch.randint(0, 11, (9,))
    grads = []
    for in_place in (False, True):
        weight = torch.randn(11, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
        if existing_grad:
            weight.grad = torch.ones_like(weight)
        out = chunked_token_logps(hidden, weight, targets, chunk_size=4, accumulate_grad_in_place=in_place)
        out.logps.sum().backward()
        grads.append((weight.grad.clone(), hidden.grad.clone()))
        hidden.grad = None
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])


def test_under_autocast_backward_multiplies_in_the_autocast_dtype():
    """Under bf16 autocast the head's forward products are bf16; its backward (which autograd runs outside autocast)
    must be too, or mixed-precision training pays float32 products for a fifth of its FLOPs. Values and gradients
    match autograd through the same autocast, to bf16 precision."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ProductDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default):
                self.dtypes |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    n, h, v = 12, 16, 40
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    upstream = torch.randn(n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = naive_token_logps(hidden @ weight.t(), targets)
        out = chunked_token_logps(hidden, weight, targets, chunk_size=5)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [hidden, weight])
    with ProductDtypes() as products:
        grads = torch.autograd.grad((out.logps * upstream).sum(), [hidden, weight])
    assert products.dtypes == {torch.bfloat16}
    assert out.logps.dtype == torch.float32 and grads[1].dtype == torch.float32
    torch.testing.assert_close(out.logps, ref, atol=1e-5, rtol=1e-5)  # the same bf16 logits, fp32 softmax
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)
