"""Router losses (posttrain.math.moe) against hand-computed values and transformers' Mixtral implementation."""

import math

import torch

from posttrain.math.moe import expert_utilization, load_balancing_loss, router_z_loss


def test_utilization_and_balance_loss_by_hand():
    # 4 tokens, 2 experts, top-1: tokens 0-2 pick expert 0, token 3 expert 1 -> f = (3/4, 1/4)
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(expert_utilization(logits, 1), torch.tensor([0.75, 0.25]))
    probs = logits.softmax(-1).mean(0)  # P_e
    expected = 2 * (0.75 * probs[0] + 0.25 * probs[1])
    assert torch.allclose(load_balancing_loss(logits, 1), expected)
    # balanced routing gives 1; every token confidently on one expert gives E
    balanced = 20 * torch.eye(3).repeat(2, 1)
    assert torch.allclose(load_balancing_loss(balanced, 1), torch.tensor(1.0))
    crowded = torch.tensor([[20.0, 0.0, 0.0]]).repeat(6, 1)
    assert torch.allclose(load_balancing_loss(crowded, 1), torch.tensor(3.0))


def test_masked_rows_do_not_count():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
    mask = torch.tensor([1, 1, 0])
    assert torch.allclose(expert_utilization(logits, 1, mask), torch.tensor([0.5, 0.5]))
    assert torch.allclose(load_balancing_loss(logits, 1, mask), load_balancing_loss(logits[:2], 1))


def test_matches_transformers_mixtral_up_to_its_factor_k():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    layers = tuple(torch.randn(10, 4, generator=g) for _ in range(3))
    theirs = load_balancing_loss_func(layers, num_experts=4, top_k=2)
    ours = load_balancing_loss(torch.cat(layers), 2)
    assert torch.allclose(theirs, 2 * ours, atol=1e-6)  # theirs counts k assignments per token without dividing


def test_router_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    expected = (math.log(2) ** 2 + math.log(math.e + math.e ** 2) ** 2) / 2
    assert math.isclose(router_z_loss(logits).item(), expected, rel_tol=1e-6)
    assert math.isclose(router_z_loss(logits, torch.tensor([1, 0])).item(), math.log(2) ** 2, rel_tol=1e-6)


def test_balance_loss_gradient_reaches_the_logits():
    logits = torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.0, 1.0]], requires_grad=True)
    load_balancing_loss(logits, 1).backward()
    assert logits.grad.abs().sum() > 0
    assert logits.grad[:, 0].sum() > 0  # descending pushes the crowded expert's logits down
