"""microdistill: knowledge distillation from a larger teacher into a small student, in pure Python.

Distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
https://arxiv.org/abs/1503.02531) trains a student on the teacher's whole output distribution, softened by a
temperature T, instead of only on the hard label:

    p_T = softmax(teacher_logits / T),   q_T = softmax(student_logits / T)
    L = alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(student_logits, label)

The soft targets say how wrong each wrong class is ("this 3 looks a bit like an 8"): much more information per
example than one label. The T^2 keeps the soft term's gradient the same size as T changes (its gradient scales
as 1/T^2 otherwise).

The task: 4 overlapping Gaussian clusters in the plane with some labels flipped (noise). The teacher, an MLP
2-24-24-4, trains on 800 labeled points. Two identical students, MLP 2-6-4, then train on only 60 points: one on the
hard labels, one on the distillation loss. The script prints each student's KL to the teacher and test accuracy.

Run:  python micro/microdistill.py           (full run, a couple of minutes on one core)
      python micro/microdistill.py --quick   (fewer steps, seconds)
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


# ----------------------------------------------------------------------------------------------- the loss

def distillation_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """Per-example alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, label).
    student_logits: lists of Values; teacher_logits: lists of floats (the teacher is fixed); labels: ints."""
    losses = []
    for s_logits, t_logits, label in zip(student_logits, teacher_logits, labels):
        t_scaled = [t / temperature for t in t_logits]
        top = max(t_scaled)
        t_log_z = math.log(sum(math.exp(t - top) for t in t_scaled)) + top
        t_logp = [t - t_log_z for t in t_scaled]  # teacher log-probabilities at temperature T (plain floats)
        s_logp = log_softmax([s / temperature for s in s_logits])
        kl = vsum([(s_logp[k] - t_logp[k]) * -math.exp(t_logp[k]) for k in range(len(t_logp))])
        hard = -log_softmax(s_logits)[label]
        losses.append(kl * (alpha * temperature ** 2) + hard * (1 - alpha))
    return losses


# ----------------------------------------------------------------------------------------------- data and models

CENTERS = [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)]


def make_data(rng, n, flip=0.15):
    data = []
    for _ in range(n):
        label = rng.randrange(4)
        x = (CENTERS[label][0] + rng.gauss(0, 0.8), CENTERS[label][1] + rng.gauss(0, 0.8))
        if rng.random() < flip:  # label noise: a hard label is sometimes simply wrong
            label = rng.randrange(4)
        data.append((x, label))
    return data


def init_mlp(rng, sizes):
    return [([[Value(rng.gauss(0, 1 / math.sqrt(a))) for _ in range(a)] for _ in range(b)],
             [Value(0.0) for _ in range(b)]) for a, b in zip(sizes, sizes[1:])]


def parameters(mlp):
    return [v for w, b in mlp for row in w for v in row] + [v for _, b in mlp for v in b]


def forward(mlp, x):
    h = [Value(x[0]), Value(x[1])]
    for i, (w, b) in enumerate(mlp):
        h = [dot(row, h) + bias for row, bias in zip(w, b)]
        if i < len(mlp) - 1:
            h = [v.tanh() for v in h]
    return h


def adam_train(mlp, steps, lr, batch_loss):
    params = parameters(mlp)
    m, v = [0.0] * len(params), [0.0] * len(params)
    for step in range(1, steps + 1):
        loss = batch_loss(step)
        loss.backward()
        for i, p in enumerate(params):
            m[i] = 0.9 * m[i] + 0.1 * p.grad
            v[i] = 0.999 * v[i] + 0.001 * p.grad ** 2
            p.data -= lr * (m[i] / (1 - 0.9 ** step)) / (math.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
            p.grad = 0.0


def accuracy(mlp, data):
    return sum(max(range(4), key=lambda k, o=forward(mlp, x): o[k].data) == y for x, y in data) / len(data)


def kl_to_teacher(student, teacher_logits, data):
    """Mean KL(teacher || student) at temperature 1 over data."""
    total = 0.0
    for (x, _), t in zip(data, teacher_logits):
        total += distillation_loss([forward(student, x)], [t], [0], temperature=1.0, alpha=1.0)[0].data
    return total / len(data)


CONFIGS = {"full": dict(n_teacher=800, n_student=60, n_test=1000, teacher_hidden=24, student_hidden=6,
                        teacher_steps=400, teacher_batch=32, student_steps=400, lr=0.01, temperature=2.0, alpha=0.7),
           "quick": dict(n_teacher=400, n_student=60, n_test=300, teacher_hidden=12, student_hidden=6,
                         teacher_steps=150, teacher_batch=16, student_steps=150, lr=0.02, temperature=2.0,
                         alpha=0.7)}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    started = time.time()
    rng = random.Random(seed)
    teacher_data, test_data = make_data(rng, cfg["n_teacher"]), make_data(rng, cfg["n_test"], flip=0.0)
    student_data = teacher_data[: cfg["n_student"]]

    teacher = init_mlp(random.Random(seed), [2, cfg["teacher_hidden"], cfg["teacher_hidden"], 4])
    batch_rng = random.Random(seed + 1)

    def teacher_loss(step):
        batch = batch_rng.sample(teacher_data, cfg["teacher_batch"])
        return vsum([-log_softmax(forward(teacher, x))[y] for x, y in batch]) / len(batch)

    adam_train(teacher, cfg["teacher_steps"], cfg["lr"], teacher_loss)
    print(f"teacher: MLP 2-{cfg['teacher_hidden']}-{cfg['teacher_hidden']}-4 ({len(parameters(teacher))} parameters),"
          f" {cfg['n_teacher']} noisy labels; test accuracy {100 * accuracy(teacher, test_data):.1f}% "
          f"(test labels are clean)")
    teacher_on_student = [[v.data for v in forward(teacher, x)] for x, _ in student_data]
    teacher_on_test = [[v.data for v in forward(teacher, x)] for x, _ in test_data]

    print(f"students: MLP 2-{cfg['student_hidden']}-4, the same initial weights, {cfg['n_student']} points, "
          f"{cfg['student_steps']} full-batch Adam steps\n")
    print("  student                          KL to teacher   test accuracy")
    results = {}
    for name, alpha in (("hard labels only", 0.0), (f"distilled (T={cfg['temperature']}, alpha={cfg['alpha']})",
                                                    cfg["alpha"])):
        student = init_mlp(random.Random(seed + 2), [2, cfg["student_hidden"], 4])

        def student_loss(step):
            logits = [forward(student, x) for x, _ in student_data]
            losses = distillation_loss(logits, teacher_on_student, [y for _, y in student_data],
                                       cfg["temperature"], alpha)
            return vsum(losses) / len(losses)

        adam_train(student, cfg["student_steps"], cfg["lr"], student_loss)
        kl, acc = kl_to_teacher(student, teacher_on_test, test_data), accuracy(student, test_data)
        results["distilled" if alpha else "hard"] = (kl, acc)
        print(f"  {name:32s} {kl:13.4f}   {100 * acc:12.1f}%")

    metrics = {"teacher_accuracy": accuracy(teacher, test_data), "kl_hard": results["hard"][0],
               "accuracy_hard": results["hard"][1], "kl_distilled": results["distilled"][0],
               "accuracy_distilled": results["distilled"][1], "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
