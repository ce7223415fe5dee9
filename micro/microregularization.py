"""microregularization: dropout, weight decay and early stopping against overfitting, in pure Python.

An MLP with far more parameters than training points can fit the noise in them: the training loss keeps falling
while the validation loss turns up. The gap between the two is what regularisation shrinks:

  dropout (Srivastava et al. 2014, https://jmlr.org/papers/v15/srivastava14a.html): in training, zero each hidden
      unit with probability p and scale the rest by 1/(1-p) ("inverted" dropout, so evaluation needs no change);
      the network cannot rely on any single unit.
  weight decay (Krogh & Hertz 1991, "A Simple Weight Decay Can Improve Generalization",
      https://papers.nips.cc/paper/563): add lambda * sum(w^2) over the weights (not the biases) to the loss, so
      large weights, which wiggly fits need, cost something. With plain SGD this is the same as shrinking every
      weight by lr * 2 lambda each step. With Adam it is not: AdamW (Loshchilov & Hutter 2019,
      https://arxiv.org/abs/1711.05101) shrinks the weights outside Adam's normalisation instead. Here the penalty
      goes into the loss on purpose: Adam then scales the pull towards zero up for exactly the weights whose data
      gradient is tiny, the ones on the irrelevant inputs.
  early stopping: keep evaluating on held-out data and keep the weights from the step where validation was best.

The task: y = sin(2 x_0) + 0.5 x_1 + noise, from 6 inputs of which only the first two matter, with just 20 training
points; an MLP 6-24-24-1 (tanh, ~800 weights on Value) trained full-batch with Adam. With so few points it can fit
them through the 4 irrelevant inputs. Each method starts from the same weights and sees the same data.

Run:  python micro/microregularization.py           (full run, about two minutes on one core)
      python micro/microregularization.py --quick   (fewer steps, seconds)
"""

import argparse
import json
import math
import random
import time

# --- autograd (identical in every micro script) ---
# A scalar reverse-mode autograd after micrograd (github.com/karpathy/micrograd). Every micro script carries this
# same block, byte for byte (tests/micro checks), so that each file runs and reads on its own. docs/micro/autograd.md
# documents the interface.


class Value:
    """One number in a computation graph.

    .data is the number, .grad the derivative of the final loss with respect to it (filled in by backward()).
    Each operation stores the Values it read (_children) and the local derivative of its result with respect to
    each of them (_local_grads); backward() then only has to multiply and add: child.grad += local * node.grad.
    """

    __slots__ = ("data", "grad", "_children", "_local_grads")

    def __init__(self, data, children=(), local_grads=()):
        self.data = data
        self.grad = 0.0
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other):
        if isinstance(other, Value):
            return Value(self.data + other.data, (self, other), (1.0, 1.0))
        return Value(self.data + other, (self,), (1.0,))  # a plain number is a constant: no node, no gradient

    def __mul__(self, other):
        if isinstance(other, Value):
            return Value(self.data * other.data, (self, other), (other.data, self.data))
        return Value(self.data * other, (self,), (other,))

    def __neg__(self):
        return Value(-self.data, (self,), (-1.0,))

    def __sub__(self, other):
        if isinstance(other, Value):
            return Value(self.data - other.data, (self, other), (1.0, -1.0))
        return Value(self.data - other, (self,), (1.0,))

    def __truediv__(self, other):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        if isinstance(other, Value):
            return Value(self.data / other.data, (self, other), (1.0 / other.data, -self.data / other.data ** 2))
        return Value(self.data / other, (self,), (1.0 / other,))

    def __pow__(self, k):  # k is a plain number: d(x^k)/dx = k x^(k-1)
        return Value(self.data ** k, (self,), (k * self.data ** (k - 1),))

    def __radd__(self, other):
        return self + other

    def __rmul__(self, other):
        return self * other

    def __rsub__(self, other):
        return Value(other - self.data, (self,), (-1.0,))

    def __rtruediv__(self, other):
        return Value(other / self.data, (self,), (-other / self.data ** 2,))

    def exp(self):
        e = math.exp(self.data)
        return Value(e, (self,), (e,))

    def log(self, floor=1e-12):
        # Clamp the input so log(0) is a large negative number instead of -inf, but keep the gradient 1/x (taken
        # at the floor): a hard clamp would give zero gradient exactly where a probability most needs pushing up.
        x = max(self.data, floor)
        return Value(math.log(x), (self,), (1.0 / x,))

    def tanh(self):
        t = math.tanh(self.data)
        return Value(t, (self,), (1.0 - t * t,))

    def relu(self):
        return Value(max(self.data, 0.0), (self,), (1.0 if self.data > 0 else 0.0,))

    def clip(self, lo, hi):
        # Like torch.clamp: the gradient is 1 inside [lo, hi] and 0 outside it (PPO's clipping relies on the 0).
        return Value(min(max(self.data, lo), hi), (self,), (1.0 if lo <= self.data <= hi else 0.0,))

    def backward(self):
        # Order the graph so that each node comes after every node it was computed from (a depth-first post-order,
        # with an explicit stack: graphs here are far deeper than Python's recursion limit), then apply the chain
        # rule from the loss backwards. Gradients accumulate, so zero the parameters' .grad between steps.
        topo, seen, stack = [], set(), [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                topo.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))
                stack.extend((child, False) for child in node._children)
        self.grad = 1.0
        for node in reversed(topo):
            for child, local in zip(node._children, node._local_grads):
                child.grad += local * node.grad

    def __repr__(self):
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"


def vsum(values):
    """Sum of Values as one node (a chain of n additions would make n nodes and a graph n deep)."""
    values = tuple(values)
    return Value(sum(v.data for v in values), values, (1.0,) * len(values))


def dot(ws, xs):
    """Dot product of two lists of Values as one node: the workhorse of every linear layer."""
    ws, xs = tuple(ws), tuple(xs)
    return Value(sum(w.data * x.data for w, x in zip(ws, xs)), ws + xs,
                 tuple(x.data for x in xs) + tuple(w.data for w in ws))


def softmax(logits):
    """Probabilities from a list of Value logits. Subtracting the max (a constant) leaves the result unchanged
    but keeps exp() from overflowing: softmax([1000, 1001, 1002]) is finite."""
    top = max(v.data for v in logits)
    exps = [(v - top).exp() for v in logits]
    total = vsum(exps)
    return [e / total for e in exps]


def log_softmax(logits):
    """log softmax(logits) = logits - logsumexp(logits), computed stably (no probability is formed, so none
    underflows to 0 before its log is taken)."""
    top = max(v.data for v in logits)
    logsumexp = vsum([(v - top).exp() for v in logits]).log() + top
    return [v - logsumexp for v in logits]
# --- end autograd ---


DIM = 6  # inputs; only the first two matter


def truth(x):
    return math.sin(2 * x[0]) + 0.5 * x[1]


def make_data(rng, n, noise):
    xs = [[rng.uniform(-1.5, 1.5) for _ in range(DIM)] for _ in range(n)]
    return [(x, truth(x) + rng.gauss(0, noise)) for x in xs]


def init_mlp(rng, sizes):
    """Layers as (weights, biases); weights ~ N(0, 1/fan_in) so tanh units start in their linear range."""
    return [([[Value(rng.gauss(0, 1 / math.sqrt(n_in))) for _ in range(n_in)] for _ in range(n_out)],
             [Value(0.0) for _ in range(n_out)]) for n_in, n_out in zip(sizes, sizes[1:])]


def parameters(mlp):
    return [v for w, b in mlp for row in w for v in row] + [v for _, b in mlp for v in b]


def copy_weights(mlp):
    return [p.data for p in parameters(mlp)]


def load_weights(mlp, data):
    for p, d in zip(parameters(mlp), data):
        p.data = d


def dropout(h, p, rng):
    """Inverted dropout: keep each unit with probability 1-p and scale it by 1/(1-p), so its expected value is
    unchanged and evaluation (no dropout) needs no rescaling."""
    return [hi * (1 / (1 - p)) if rng.random() >= p else Value(0.0) for hi in h]


def forward(mlp, x, drop_p=0.0, rng=None):
    h = [Value(xi) for xi in x]
    for i, (w, b) in enumerate(mlp):
        h = [dot(row, h) + bias for row, bias in zip(w, b)]
        if i < len(mlp) - 1:
            h = [hi.tanh() for hi in h]
            if drop_p:
                h = dropout(h, drop_p, rng)
    return h[0]


def mse(mlp, data):
    return sum((forward(mlp, x).data - y) ** 2 for x, y in data) / len(data)


def train(mlp, train_data, val_data, cfg, drop_p=0.0, weight_decay=0.0, seed=0):
    """Full-batch Adam. Returns (best validation loss, the step it was reached, its weights)."""
    rng = random.Random(seed)
    params = parameters(mlp)
    weights = [v for w, _ in mlp for row in w for v in row]
    m, v = [0.0] * len(params), [0.0] * len(params)
    best = (float("inf"), 0, None)
    for step in range(1, cfg["steps"] + 1):
        loss = vsum([(forward(mlp, x, drop_p, rng) - y) ** 2 for x, y in train_data]) / len(train_data)
        if weight_decay:
            loss = loss + vsum([w * w for w in weights]) * weight_decay
        loss.backward()
        for i, p in enumerate(params):
            m[i] = 0.9 * m[i] + 0.1 * p.grad
            v[i] = 0.999 * v[i] + 0.001 * p.grad ** 2
            p.data -= cfg["lr"] * (m[i] / (1 - 0.9 ** step)) / (math.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
            p.grad = 0.0
        if step % cfg["eval_every"] == 0:
            val = mse(mlp, val_data)
            if val < best[0]:
                best = (val, step, copy_weights(mlp))
    return best


CONFIGS = {"full": dict(hidden=24, n_train=20, n_val=200, noise=0.2, steps=1500, lr=0.005, eval_every=25,
                        dropout=0.2, weight_decay=0.05),
           "quick": dict(hidden=12, n_train=16, n_val=60, noise=0.2, steps=300, lr=0.01, eval_every=15,
                         dropout=0.2, weight_decay=0.05)}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    started = time.time()
    rng = random.Random(seed)
    train_data, val_data = make_data(rng, cfg["n_train"], cfg["noise"]), make_data(rng, cfg["n_val"], cfg["noise"])
    sizes = [DIM, cfg["hidden"], cfg["hidden"], 1]
    n_params = len(parameters(init_mlp(random.Random(seed), sizes)))
    print(f"{cfg['n_train']} noisy training points, {n_params}-parameter MLP, {cfg['steps']} full-batch Adam steps; "
          f"the noise alone costs {cfg['noise'] ** 2:.3f} in MSE, so a validation loss near that is the best possible")
    print(f"\n  method{'':21s}train mse   val mse   gap (val - train)")
    results = {}
    for name, kwargs in (("none", {}), ("dropout p=%g" % cfg["dropout"], {"drop_p": cfg["dropout"]}),
                         ("weight decay %g" % cfg["weight_decay"], {"weight_decay": cfg["weight_decay"]})):
        mlp = init_mlp(random.Random(seed), sizes)
        best_val, best_step, best_weights = train(mlp, train_data, val_data, cfg, seed=seed, **kwargs)
        results[name] = (mse(mlp, train_data), mse(mlp, val_data))
        if name == "none":
            # Early stopping is the unregularised run, rewound to its best validation step.
            final = copy_weights(mlp)
            load_weights(mlp, best_weights)
            results[f"early stopping (step {best_step})"] = (mse(mlp, train_data), mse(mlp, val_data))
            load_weights(mlp, final)
    for name, (tr, va) in results.items():
        print(f"  {name:27s}{tr:9.4f}  {va:8.4f}   {va - tr:+8.4f}")

    keys = list(results)
    metrics = {"none": results[keys[0]], "early_stopping": results[keys[1]], "dropout": results[keys[2]],
               "weight_decay": results[keys[3]], "seconds": round(time.time() - started, 1)}
    metrics = {k: ({"train": v[0], "val": v[1], "gap": v[1] - v[0]} if isinstance(v, tuple) else v)
               for k, v in metrics.items()}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
