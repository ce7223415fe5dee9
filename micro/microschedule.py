"""microschedule: learning-rate schedules (constant, step decay, warmup + cosine), in pure Python.

The learning rate need not stay fixed. Three common shapes, each with the same peak lr_max over S steps:

  constant:        lr(s) = lr_max
  step decay:      lr(s) = lr_max * 0.1^(number of milestones passed)      milestones at 50% and 75% of S
  warmup + cosine: lr(s) = lr_max * s / W                                  for s < W (linear warmup)
                   lr(s) = lr_max * 0.5 * (1 + cos(pi * (s - W) / (S - W)))  after (Loshchilov & Hutter 2017,
                   "SGDR", https://arxiv.org/abs/1608.03983; warmup as in Goyal et al. 2017, arXiv 1706.02677)

Why decay at all: with minibatches the gradient is noisy, and a step of size lr keeps the weights bouncing around
the minimum in a cloud whose size grows with lr. Shrinking lr at the end lets them settle, so the final loss drops.
Why warm up: Adam's early second-moment estimates rest on few steps, and the first updates of a fresh network are
the largest and least informed; starting small avoids a bad early jump.

The task: a character-level MLP language model on micro/names.txt (the previous 3 characters -> the next one,
embeddings of size 8, 48 tanh units, after Bengio et al. 2003), trained with Adam at a deliberately high peak rate so
the difference shows. The same initial weights and the same minibatches for every schedule.

Run:  python micro/microschedule.py           (full run, a few minutes on one core)
      python micro/microschedule.py --quick   (fewer steps, seconds)
"""

import argparse
import json
import math
import os
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


BOS = 0
CHARS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = 1 + len(CHARS)
CONTEXT = 3


def load_examples():
    """(previous 3 tokens, next token) for every position of every name in micro/names.txt."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "names.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    examples = []
    for name in names:
        tokens = [BOS] * CONTEXT + [1 + CHARS.index(c) for c in name] + [BOS]
        examples += [(tuple(tokens[i - CONTEXT:i]), tokens[i]) for i in range(CONTEXT, len(tokens))]
    return examples


# ----------------------------------------------------------------------------------------------- schedules

def constant(step, total, lr_max):
    return lr_max


def step_decay(step, total, lr_max, milestones=(0.5, 0.75), factor=0.1):
    return lr_max * factor ** sum(step >= m * total for m in milestones)


def warmup_cosine(step, total, lr_max, warmup_fraction=0.05):
    warmup = max(1, int(warmup_fraction * total))
    if step < warmup:
        return lr_max * (step + 1) / warmup
    return lr_max * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


SCHEDULES = {"constant": constant, "step decay": step_decay, "warmup + cosine": warmup_cosine}


# ----------------------------------------------------------------------------------------------- model

def init_model(rng, n_embd, hidden):
    return {"emb": [[Value(rng.gauss(0, 1)) for _ in range(n_embd)] for _ in range(VOCAB)],
            "w1": [[Value(rng.gauss(0, 1 / math.sqrt(CONTEXT * n_embd))) for _ in range(CONTEXT * n_embd)]
                   for _ in range(hidden)],
            "w2": [[Value(rng.gauss(0, 1 / math.sqrt(hidden))) for _ in range(hidden)] for _ in range(VOCAB)],
            "b2": [[Value(0.0) for _ in range(VOCAB)]]}


def parameters(model):
    return [v for m in model.values() for row in m for v in row]


def nll(model, context, target):
    x = [v for token in context for v in model["emb"][token]]  # concatenated embeddings
    h = [dot(row, x).tanh() for row in model["w1"]]
    logits = [dot(row, h) + b for row, b in zip(model["w2"], model["b2"][0])]
    return -log_softmax(logits)[target]


def train(schedule, examples, cfg, seed):
    model = init_model(random.Random(seed), cfg["n_embd"], cfg["hidden"])
    rng = random.Random(seed + 1)  # the same minibatches for every schedule
    params = parameters(model)
    m, v = [0.0] * len(params), [0.0] * len(params)
    for step in range(cfg["steps"]):
        lr = schedule(step, cfg["steps"], cfg["lr_max"])
        batch = rng.sample(examples, cfg["batch"])
        loss = vsum([nll(model, c, t) for c, t in batch]) / len(batch)
        loss.backward()
        for i, p in enumerate(params):
            m[i] = 0.9 * m[i] + 0.1 * p.grad
            v[i] = 0.999 * v[i] + 0.001 * p.grad ** 2
            p.data -= lr * (m[i] / (1 - 0.9 ** (step + 1))) / (math.sqrt(v[i] / (1 - 0.999 ** (step + 1))) + 1e-8)
            p.grad = 0.0
    return model


def mean_nll(model, examples):
    return sum(nll(model, c, t).data for c, t in examples) / len(examples)


CONFIGS = {"full": dict(n_embd=8, hidden=48, steps=1500, batch=32, lr_max=0.05, n_val=1500),
           "quick": dict(n_embd=6, hidden=16, steps=150, batch=12, lr_max=0.05, n_val=200)}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    started = time.time()
    examples = load_examples()
    random.Random(seed).shuffle(examples)
    val, train_examples = examples[: cfg["n_val"]], examples[cfg["n_val"]:]
    print(f"{len(train_examples)} training characters, {cfg['steps']} Adam steps of {cfg['batch']}, peak lr "
          f"{cfg['lr_max']}, {len(parameters(init_model(random.Random(0), cfg['n_embd'], cfg['hidden'])))} parameters")
    marks = [0, cfg["steps"] // 20, cfg["steps"] // 4, cfg["steps"] // 2, 3 * cfg["steps"] // 4, cfg["steps"] - 1]
    print("\n  learning rate at step  " + "".join(f"{s + 1:>9d}" for s in marks))
    for name, schedule in SCHEDULES.items():
        print(f"  {name:22s}" + "".join(f"{schedule(s, cfg['steps'], cfg['lr_max']):9.4f}" for s in marks))
    print(f"\n  schedule           final validation loss (nats per character, {len(val)} held-out characters)")
    finals = {}
    for name, schedule in SCHEDULES.items():
        finals[name] = mean_nll(train(schedule, train_examples, cfg, seed), val)
        print(f"  {name:18s} {finals[name]:.4f}")
    print(f"  (uniform guessing: {math.log(VOCAB):.4f})")
    metrics = {"final_loss": finals, "uniform_loss": math.log(VOCAB), "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
