"""The scalar autograd every micro script carries: each operation's gradient against finite differences, and the
reference values from issue 7. The block is identical in every script (test_micro_structure checks), so testing one
copy tests them all."""

import math

import pytest

from micro_loader import load_micro

ag = load_micro("microlora")
Value, vsum, dot, softmax, log_softmax = ag.Value, ag.vsum, ag.dot, ag.softmax, ag.log_softmax

EPS, TOL = 1e-6, 1e-6


def numeric_grad(f, xs, i):
    """Central difference of f (a function of plain floats) in its i-th argument."""
    up, down = list(xs), list(xs)
    up[i] += EPS
    down[i] -= EPS
    return (f(up) - f(down)) / (2 * EPS)


def check(build, xs):
    """build(list of Values) -> Value; compare backward() with finite differences for every input."""
    vals = [Value(x) for x in xs]
    build(vals).backward()
    for i, v in enumerate(vals):
        expected = numeric_grad(lambda ys: build([Value(y) for y in ys]).data, xs, i)
        assert v.grad == pytest.approx(expected, abs=TOL, rel=TOL), f"input {i}"


OPS = {
    "add": (lambda v: v[0] + v[1], [1.3, -0.7]),
    "add_const": (lambda v: v[0] + 2.5, [1.3]),
    "radd": (lambda v: 2.5 + v[0], [1.3]),
    "mul": (lambda v: v[0] * v[1], [1.3, -0.7]),
    "mul_const": (lambda v: v[0] * -3.0, [1.3]),
    "rmul": (lambda v: -3.0 * v[0], [1.3]),
    "neg": (lambda v: -v[0], [1.3]),
    "sub": (lambda v: v[0] - v[1], [1.3, -0.7]),
    "sub_const": (lambda v: v[0] - 0.4, [1.3]),
    "rsub": (lambda v: 0.4 - v[0], [1.3]),
    "div": (lambda v: v[0] / v[1], [1.3, -0.7]),
    "div_const": (lambda v: v[0] / 0.4, [1.3]),
    "rdiv": (lambda v: 0.4 / v[0], [1.3]),
    "pow": (lambda v: v[0] ** 3, [1.3]),
    "pow_negative": (lambda v: v[0] ** -0.5, [1.3]),
    "exp": (lambda v: v[0].exp(), [0.3]),
    "log": (lambda v: v[0].log(), [0.3]),
    "tanh": (lambda v: v[0].tanh(), [0.3]),
    "relu_positive": (lambda v: v[0].relu(), [0.3]),
    "relu_negative": (lambda v: v[0].relu(), [-0.3]),
    "clip_inside": (lambda v: v[0].clip(0.8, 1.2), [1.1]),
    "clip_below": (lambda v: v[0].clip(0.8, 1.2), [0.5]),
    "clip_above": (lambda v: v[0].clip(0.8, 1.2), [1.5]),
    "vsum": (lambda v: vsum(v), [0.3, -1.2, 2.0]),
    "dot": (lambda v: dot(v[:2], v[2:]), [0.3, -1.2, 2.0, 0.7]),
    "softmax": (lambda v: softmax(v)[1] * 2 + softmax(v)[2], [0.3, -1.2, 2.0]),
    "log_softmax": (lambda v: log_softmax(v)[0] - 0.5 * log_softmax(v)[2], [0.3, -1.2, 2.0]),
    "composite": (lambda v: ((v[0] * v[1]).tanh() + (v[1] / v[2]).exp() - (v[2] ** 2).log()).relu(), [0.5, 0.8, 1.5]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradient_matches_finite_differences(name):
    build, xs = OPS[name]
    check(build, xs)


def test_clip_gradient_is_zero_outside_and_one_inside():
    for x, expected in ((0.5, 0.0), (1.5, 0.0), (1.0, 1.0), (0.8, 1.0), (1.2, 1.0)):  # edges pass, like torch.clamp
        v = Value(x)
        out = v.clip(0.8, 1.2)
        out.backward()
        assert v.grad == expected
        assert out.data == min(max(x, 0.8), 1.2)


def test_reference_vectors_from_the_issue():
    a, b = Value(2.0), Value(3.0)
    c = a * b + b
    c.backward()
    assert (c.data, a.grad, b.grad) == (9.0, 3.0, 3.0)

    x = Value(0.5)
    x.tanh().backward()
    assert x.grad == pytest.approx(0.7864, abs=1e-4)

    a = Value(1.7)
    (a + a).backward()
    assert a.grad == 2.0

    probs = softmax([Value(1000.0), Value(1001.0), Value(1002.0)])
    assert all(math.isfinite(p.data) for p in probs)
    assert sum(p.data for p in probs) == pytest.approx(1.0)
    assert probs[2].data == pytest.approx(math.exp(2) / (1 + math.e + math.exp(2)))


def test_log_clamps_value_but_keeps_gradient():
    x = Value(0.0)
    y = x.log()
    y.backward()
    assert math.isfinite(y.data) and y.data < -20
    assert x.grad > 0 and math.isfinite(x.grad)  # a hard clamp would have given 0 here


def test_shared_subexpressions_accumulate_and_deep_graphs_do_not_recurse():
    x = Value(0.5)
    y = x
    for _ in range(20000):  # far deeper than Python's recursion limit
        y = y + x * 0.0001
    y.backward()
    assert x.grad == pytest.approx(1 + 20000 * 0.0001)
