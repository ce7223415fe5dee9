"""microbatchnorm: batch normalisation, its running statistics, and train vs eval mode, in pure Python.

Batch normalisation (Ioffe & Szegedy 2015, https://arxiv.org/abs/1502.03167) normalises each feature over the batch
before the nonlinearity, then lets the network rescale it:

    mu = mean_batch(x),  var = mean_batch((x - mu)^2),  x_hat = (x - mu) / sqrt(var + eps),  y = gamma x_hat + beta

Gradients flow through mu and var too (the script builds them from Value, so backward() handles it). In training
the statistics come from the batch, so one example's output depends on the others in its batch; for evaluation
the layer uses running averages collected during training instead,

    running_mu <- (1 - momentum) running_mu + momentum mu       (the same for var)

so the output of an example is a fixed function of that example. The script shows both sides: a deep tanh MLP whose
weights start too small (the signal shrinks layer by layer and learning crawls) trains much faster with batch norm;
in eval mode an example's prediction no longer depends on its batch, in train mode it does.

The task: classify points of two interleaved spirals (2 classes) with an MLP of 6 hidden layers of 8 units.

Run:  python micro/microbatchnorm.py           (full run, about a minute on one core)
      python micro/microbatchnorm.py --quick   (fewer steps, seconds)
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


def make_spirals(rng, n):
    data = []
    for i in range(n):
        label, t = i % 2, rng.uniform(0.25, 1.0)
        angle = 3 * math.pi * t + label * math.pi
        data.append(((t * math.cos(angle) + rng.gauss(0, 0.03), t * math.sin(angle) + rng.gauss(0, 0.03)), label))
    return data


class BatchNorm:
    """Per-feature batch normalisation with a learned scale (gamma) and shift (beta)."""

    def __init__(self, n, momentum=0.1, eps=1e-5):
        self.gamma, self.beta = [Value(1.0) for _ in range(n)], [Value(0.0) for _ in range(n)]
        self.running_mean, self.running_var = [0.0] * n, [1.0] * n
        self.momentum, self.eps, self.training = momentum, eps, True

    def __call__(self, batch):
        """batch: a list of examples, each a list of n Values. Returns the normalised batch."""
        out = [[None] * len(batch[0]) for _ in batch]
        for j in range(len(batch[0])):
            column = [row[j] for row in batch]
            if self.training:
                mean = vsum(column) / len(column)
                var = vsum([(x - mean) ** 2 for x in column]) / len(column)
                # Running statistics are plain numbers: they are bookkeeping, not part of the graph.
                self.running_mean[j] += self.momentum * (mean.data - self.running_mean[j])
                self.running_var[j] += self.momentum * (var.data - self.running_var[j])
            else:
                mean, var = self.running_mean[j], self.running_var[j]
            scale = (var + self.eps) ** -0.5
            for i, x in enumerate(column):
                out[i][j] = (x - mean) * scale * self.gamma[j] + self.beta[j]
        return out

    def parameters(self):
        return self.gamma + self.beta


class MLP:
    def __init__(self, rng, depth, width, batchnorm, init_std):
        sizes = [2] + [width] * depth + [2]
        self.layers = [([[Value(rng.gauss(0, init_std)) for _ in range(a)] for _ in range(b)],
                        [Value(0.0) for _ in range(b)]) for a, b in zip(sizes, sizes[1:])]
        self.norms = [BatchNorm(width) for _ in range(depth)] if batchnorm else []

    def __call__(self, xs):
        """Logits for a batch of inputs (the batch is processed together: batch norm needs all of it)."""
        h = [[Value(v) for v in x] for x in xs]
        for i, (w, b) in enumerate(self.layers):
            h = [[dot(row, hi) + bias for row, bias in zip(w, b)] for hi in h]
            if i < len(self.layers) - 1:
                if self.norms:
                    h = self.norms[i](h)
                h = [[v.tanh() for v in hi] for hi in h]
        return h

    def train_mode(self, on):
        for norm in self.norms:
            norm.training = on

    def parameters(self):
        return ([v for w, b in self.layers for row in w for v in row] + [v for _, b in self.layers for v in b]
                + [p for n in self.norms for p in n.parameters()])


def cross_entropy(logits, labels):
    return vsum([-log_softmax(l)[y] for l, y in zip(logits, labels)]) / len(labels)


def evaluate(model, data):
    model.train_mode(False)
    logits = model([x for x, _ in data])
    model.train_mode(True)
    loss = sum(-log_softmax(l)[y].data for l, (_, y) in zip(logits, data)) / len(data)
    acc = sum((l[1].data > l[0].data) == (y == 1) for l, (_, y) in zip(logits, data)) / len(data)
    return loss, acc


def train(model, data, cfg, seed, label):
    rng = random.Random(seed)
    params = model.parameters()
    m, v = [0.0] * len(params), [0.0] * len(params)
    curve = []
    for step in range(1, cfg["steps"] + 1):
        batch = rng.sample(data, cfg["batch"])
        loss = cross_entropy(model([x for x, _ in batch]), [y for _, y in batch])
        loss.backward()
        for i, p in enumerate(params):
            m[i] = 0.9 * m[i] + 0.1 * p.grad
            v[i] = 0.999 * v[i] + 0.001 * p.grad ** 2
            p.data -= cfg["lr"] * (m[i] / (1 - 0.9 ** step)) / (math.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
            p.grad = 0.0
        curve.append(loss.data)
        if step % max(1, cfg["steps"] // 5) == 0:
            print(f"  {label:18s} step {step:4d}/{cfg['steps']}  train loss (last 20 steps) "
                  f"{sum(curve[-20:]) / len(curve[-20:]):.4f}")
    return curve


CONFIGS = {"full": dict(depth=6, width=8, init_std=0.2, n_train=400, n_test=400, steps=600, batch=32, lr=0.01),
           "quick": dict(depth=6, width=8, init_std=0.2, n_train=200, n_test=200, steps=120, batch=16, lr=0.03)}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    started = time.time()
    rng = random.Random(seed)
    train_data, test_data = make_spirals(rng, cfg["n_train"]), make_spirals(rng, cfg["n_test"])
    print(f"two spirals; MLP 2-{'-'.join([str(cfg['width'])] * cfg['depth'])}-2 with tanh, weights ~ "
          f"N(0, {cfg['init_std']}^2) (too small: the signal fades layer by layer); Adam, batch {cfg['batch']}\n")
    results = {}
    for name, use_bn in (("without batch norm", False), ("with batch norm", True)):
        model = MLP(random.Random(seed), cfg["depth"], cfg["width"], use_bn, cfg["init_std"])
        curve = train(model, train_data, cfg, seed, name)
        test_loss, test_acc = evaluate(model, test_data)
        results[name] = {"final_train_loss": sum(curve[-20:]) / len(curve[-20:]), "test_loss": test_loss,
                         "test_accuracy": test_acc}
        print(f"  {name:18s} test loss {test_loss:.4f}  test accuracy {100 * test_acc:.1f}%\n")

    # Train vs eval mode, on the batch-norm model just trained.
    x = test_data[0][0]
    others = [p for p, _ in test_data[1:8]]
    different = [p for p, _ in test_data[8:15]]
    model.train_mode(False)
    eval_a, eval_b = model([x] + others)[0][1].data, model([x] + different)[0][1].data
    eval_alone = model([x])[0][1].data
    model.train_mode(True)
    train_a, train_b = model([x] + others)[0][1].data, model([x] + different)[0][1].data
    print("the same example's logit for class 1, inside two different batches of 8:")
    print(f"  eval mode (running statistics):  {eval_a:+.6f}  {eval_b:+.6f}   alone: {eval_alone:+.6f}")
    print(f"  train mode (batch statistics):   {train_a:+.6f}  {train_b:+.6f}")
    # What eval mode used instead of batch statistics: averages collected during training.
    bn = model.norms[0]
    print(f"  first layer running mean of feature 0: {bn.running_mean[0]:+.4f}, running var {bn.running_var[0]:.4f}")

    metrics = {"without_bn": results["without batch norm"], "with_bn": results["with batch norm"],
               "eval_mode_batch_independent": eval_a == eval_b == eval_alone,
               "train_mode_difference": abs(train_a - train_b), "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
