"""SFT of a mixture of experts adds the router losses (posttrain.models.moe_training) on a tiny upcycled llama."""

import torch

from posttrain.math import sft_nll_sum
from posttrain.math.moe import expert_utilization, load_balancing_loss, router_z_loss
from posttrain.models import build_tiny_model
from posttrain.models.forward import token_logps
from posttrain.models.moe_training import RouterLosses, moe_config
from posttrain.models.upcycling import upcycle_model
from posttrain.trainers.sft import SFTMethod
from tests.conftest import random_examples

VOCAB = 256


def moe_model(top_k=2, bias=0.0):
    model = upcycle_model(build_tiny_model(0, vocab_size=VOCAB), num_experts=4, top_k=top_k, seed=0)
    if bias:
        with torch.no_grad():  # a router that sends most tokens to expert 0
            for layer in model.model.layers:
                layer.mlp.gate.weight[0] += bias * layer.mlp.gate.weight[0].sign()
    return model.train()


def method(model, aux=0.1, z=0.01):
    return SFTMethod(RouterLosses(moe_config(model), aux, z))


def step_loss(model, sft, batches):
    """The engine's step: prepare over the micro-batches, then each loss over the step's item count, backward."""
    sft.prepare_step(model, batches, 0)
    items = sum(sft.count(b) for b in batches)
    outs = [sft.loss(model, b) for b in batches]
    total = sum(o.loss_sum / items for o in outs)
    metrics = {k: sum(o.metrics[k] for o in outs) / items for k in outs[0].metrics}
    return total, metrics


def test_dense_models_get_no_router_losses():
    assert moe_config(build_tiny_model(0, vocab_size=VOCAB)) is None


def test_added_loss_is_the_pure_functions_value_and_reaches_the_routers():
    model = moe_model()
    sft = method(model, aux=0.3, z=0.05)
    batch = sft.collate(random_examples(3, vocab=VOCAB), 0)  # padded rows of different lengths
    assert (batch["attention_mask"] == 0).any()
    total, metrics = step_loss(model, sft, [batch])
    stats, mask = token_logps(model, batch)
    nll = sft_nll_sum(stats.logps, mask) / mask.sum()
    with torch.no_grad():  # by hand: the model's own router logits, real tokens only, mean over layers
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True)
    logits = out.router_logits
    real = batch["attention_mask"].reshape(-1)
    balance = sum(load_balancing_loss(x, 2, real) for x in logits) / len(logits)
    z = sum(router_z_loss(x, real) for x in logits) / len(logits)
    assert abs(float(total.detach()) - float(nll.detach() + 0.3 * balance + 0.05 * z)) < 1e-5
    assert abs(metrics["router_balance_loss"] - float(balance)) < 1e-5
    assert abs(metrics["router_aux_loss"] - float(0.3 * balance + 0.05 * z)) < 1e-5
    usage = sum(expert_utilization(x, 2, real) for x in logits) / len(logits)
    shares = torch.tensor([metrics[f"expert_utilization_{e}"] for e in range(4)])
    assert torch.allclose(shares, usage, atol=1e-6) and abs(float(shares.sum()) - 1) < 1e-6

    # the aux term alone (task loss subtracted) has a gradient on every layer's router
    model.zero_grad(set_to_none=True)
    (total - nll).backward()
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.grad is not None and layer.mlp.gate.weight.grad.abs().sum() > 0


def test_held_out_loss_stays_the_task_loss():
    model = moe_model()
    sft, dense = method(model), SFTMethod()
    batch = sft.collate(random_examples(2, vocab=VOCAB), 0)
    model.eval()
    with torch.no_grad():
        total, metrics = step_loss(model, sft, [batch])
        plain, _ = step_loss(model, dense, [batch])
    assert float(total) == float(plain) and metrics["router_balance_loss"] > 0


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_is_exact():
    examples = random_examples(6, vocab=VOCAB, min_len=8, max_len=8)  # equal lengths: one batch = two halves
    model = moe_model()
    sft = method(model, aux=0.5, z=0.1)
    whole, whole_metrics = step_loss(model, sft, [sft.collate(examples, 0)])
    whole.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    parts, part_metrics = step_loss(model, sft, [sft.collate(examples[:2], 0), sft.collate(examples[2:], 0)])
    parts.backward()
    assert abs(float(parts.detach()) - float(whole.detach())) < 1e-6
    for name in ("router_aux_loss", "router_balance_loss", "expert_utilization_0"):
        assert abs(part_metrics[name] - whole_metrics[name]) < 1e-6, name
    actual = grads(model)
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.allclose(actual[name], grad, atol=1e-6, rtol=1e-4), name


def balance_after_training(aux: float, steps=12) -> float:
    """Balance loss (1 = even routing, 4 = one expert) after a few SFT steps from a router biased to expert 0."""
    torch.manual_seed(0)
    model = moe_model(top_k=1, bias=0.5)
    sft = method(model, aux=aux, z=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    examples = random_examples(32, vocab=VOCAB)
    for step in range(steps):
        batch = sft.collate(examples[(4 * step) % 32:(4 * step) % 32 + 4], 0)
        loss, _ = step_loss(model, sft, [batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        _, metrics = step_loss(model, sft, [sft.collate(random_examples(8, seed=1, vocab=VOCAB), 0)])
    return metrics["router_balance_loss"]


def test_aux_loss_keeps_routing_more_balanced():
    without, with_aux = balance_after_training(0.0), balance_after_training(1.0)
    print(f"balance loss after 12 SFT steps: without aux {without:.3f}, with aux (coef 1) {with_aux:.3f}")
    assert with_aux < without - 0.1, (without, with_aux)


def test_engine_logs_router_figures_and_accumulates_exactly(tmp_path):
    from tests.engine.test_engine import make_engine, read_log

    examples = random_examples(16, seed=3, vocab=VOCAB, min_len=3, max_len=20)
    runs = {}
    for name, batch_size, accum in (("big", 4, 1), ("small", 2, 2)):
        model = moe_model()
        engine = make_engine(tmp_path, name, examples, model=model, method=method(model, aux=0.5, z=0.1),
                             batch_size=batch_size, grad_accum_steps=accum, max_steps=2, learning_rate=1e-3)
        engine.train()
        runs[name] = (read_log(tmp_path / name), model)
    (big_log, big), (small_log, small) = runs["big"], runs["small"]
    for a, b in zip(big_log, small_log):
        assert abs(sum(a[f"expert_utilization_{e}"] for e in range(4)) - 1) < 1e-5
        for key in ("loss", "router_aux_loss", "expert_utilization_0"):
            assert abs(a[key] - b[key]) < 1e-5 * max(1, abs(a[key])), key
    for (name, p), q in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)
