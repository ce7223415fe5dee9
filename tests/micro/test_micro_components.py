"""Properties of individual micro components, checked by importing the scripts: LoRA's zero start and frozen base,
the mixture of experts' auxiliary-loss gradient, batch norm's modes, the schedules' shapes."""

import math
import random

import pytest

from micro_loader import load_micro


def test_lora_adapter_is_exactly_zero_at_init_and_base_weights_stay_unchanged():
    m = load_micro("microlora")
    rng = random.Random(0)
    params = m.init_gpt(rng, n_embd=8, n_head=2, block_size=16)
    lora = m.init_lora(rng, params, rank=2, alpha=4.0)
    x = [m.Value(rng.gauss(0, 1)) for _ in range(8)]
    for name in m.ATTENTION:
        assert all(d.data == 0.0 for d in m.lora_delta(x, lora, name))
    tokens = m.encode("drungar")
    assert m.sequence_loss(params, tokens, lora).data == m.sequence_loss(params, tokens).data  # bit for bit

    base, adapters = m.parameters(params), m.parameters(lora)
    snapshot = [p.data for p in base]
    before = m.sequence_loss(params, tokens, lora).data
    m.adam(adapters, 5, 0.05, lambda step: (m.sequence_loss(params, tokens, lora), base + adapters), 100, "test")
    assert [p.data for p in base] == snapshot
    assert any(p.data != 0.0 for p in adapters if p in set(v for a, b in (lora[n] for n in m.ATTENTION) for row in b
                                                           for v in row))  # B has moved off zero
    assert m.sequence_loss(params, tokens, lora).data < before
    assert len(adapters) == 4 * 2 * (2 * 8)  # four projections, A (r x d) and B (d x r)


def _router_batch(m, seed=0, n=24):
    rng = random.Random(seed)
    router = m.init_router(rng, 4)
    xs = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(n)]
    return router, xs


def test_moe_aux_loss_gradient_reaches_the_router_and_matches_finite_differences():
    m = load_micro("micromoe")
    router, xs = _router_batch(m)
    probs = [m.router_probs(router, x) for x in xs]
    chosen = [m.top_k_gates(p, 2)[0] for p in probs]
    aux = m.load_balancing_loss(probs, chosen, 4)
    aux.backward()
    grads = [p.grad for p in m.router_parameters(router)]
    assert max(abs(g) for g in grads) > 1e-4

    def aux_at(values):  # routing decisions (f_e) held fixed, as they are constants in the loss
        for p, v in zip(m.router_parameters(router), values):
            p.data = v
        return m.load_balancing_loss([m.router_probs(router, x) for x in xs], chosen, 4).data

    start = [p.data for p in m.router_parameters(router)]
    for i, g in enumerate(grads):
        up, down = list(start), list(start)
        up[i] += 1e-6
        down[i] -= 1e-6
        assert g == pytest.approx((aux_at(up) - aux_at(down)) / 2e-6, abs=1e-6)


def test_moe_top_k_gates_are_renormalised_and_balance_gives_aux_one():
    m = load_micro("micromoe")
    probs = [m.Value(p) for p in (0.1, 0.4, 0.3, 0.2)]
    chosen, gates = m.top_k_gates(probs, 2)
    assert chosen == [1, 2]
    assert [g.data for g in gates] == pytest.approx([4 / 7, 3 / 7])
    uniform = [[m.Value(0.25) for _ in range(4)] for _ in range(4)]
    assert m.load_balancing_loss(uniform, [[0, 1], [2, 3], [0, 2], [1, 3]], 4).data == pytest.approx(1.0)


def test_moe_main_loss_gradient_also_reaches_the_router():
    """With no auxiliary loss the router still learns: the experts' side hands dL/dg_e to the router's graph."""
    m = load_micro("micromoe")
    cfg = dict(m.CONFIGS["quick"], steps=1, batch=8)
    rng = random.Random(0)  # train() draws its experts, then its router, from Random(seed)
    [m.Expert(rng, cfg["hidden"]) for _ in range(cfg["n_experts"])]
    start = [p.data for p in m.router_parameters(m.init_router(rng, cfg["n_experts"]))]
    router, _ = m.train(0, cfg, aux_coef=0.0, data=m.make_data(random.Random(1), 50), log=False)
    moved = [abs(p.data - q) for p, q in zip(m.router_parameters(router), start)]
    assert all(d > 1e-4 for d in moved)


def test_batchnorm_normalises_in_train_mode_and_uses_running_stats_in_eval_mode():
    m = load_micro("microbatchnorm")
    bn = m.BatchNorm(2, momentum=1.0)  # momentum 1: running stats = the last batch's
    batch = [[m.Value(x), m.Value(2 * x + 1)] for x in (1.0, 2.0, 3.0, 6.0)]
    out = bn(batch)
    for j in range(2):
        column = [row[j].data for row in out]
        assert sum(column) / 4 == pytest.approx(0.0, abs=1e-12)
        assert sum(c * c for c in column) / 4 == pytest.approx(1.0, abs=1e-4)
    bn.training = False
    alone = bn([batch[0]])[0][0].data
    assert alone == pytest.approx(out[0][0].data)  # the same statistics, now stored
    assert bn([batch[0], batch[3]])[0][0].data == alone  # eval mode: independent of the batch


def test_schedules_have_their_shapes():
    m = load_micro("microschedule")
    total, peak = 100, 0.1
    assert all(m.constant(s, total, peak) == peak for s in range(total))
    assert m.step_decay(0, total, peak) == peak
    assert m.step_decay(60, total, peak) == pytest.approx(peak * 0.1)
    assert m.step_decay(90, total, peak) == pytest.approx(peak * 0.01)
    lrs = [m.warmup_cosine(s, total, peak) for s in range(total)]
    warmup = lrs.index(max(lrs))
    assert lrs[0] < peak and max(lrs) == pytest.approx(peak)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))
    assert lrs[-1] < 0.01 * peak


def test_reinforce_baseline_keeps_the_gradient_unbiased():
    m = load_micro("microreinforce")
    # The exact expected gradient at the uniform policy, by enumerating one position's 5 letters:
    # E[(R - b) grad log pi] does not depend on b because E[grad log pi] = 0.
    logits = [m.Value(0.0) for _ in m.ALPHABET]
    for baseline in (0.0, 1.2, 5.0):
        for v in logits:
            v.grad = 0.0
        logprobs = m.log_softmax(logits)
        advantages = [float(i == 1) - baseline for i in range(len(logits))]  # only the second letter pays
        expected = m.vsum([loss * math.exp(lp.data)  # sum over y of pi(y) * loss(y), pi(y) held constant
                           for lp, loss in zip(logprobs, m.policy_gradient_loss(logprobs, advantages))])
        expected.backward()
        assert [v.grad for v in logits] == pytest.approx([0.04, -0.16, 0.04, 0.04, 0.04])  # -(grad J)
