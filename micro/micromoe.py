"""micromoe: a mixture of experts with top-k routing and a load-balancing loss, in pure Python.

A mixture-of-experts layer (Shazeer et al. 2017, https://arxiv.org/abs/1701.06538) sends each input to k of E expert
networks chosen by a router, so the model has E experts' parameters but pays for only k per input:

    p = softmax(W_r x)                           router probabilities over E experts
    T = top-k indices of p,   g_e = p_e / sum_{j in T} p_j   (renormalised over the chosen k)
    y = sum_{e in T} g_e * expert_e(x)

Left alone, a router tends to collapse: experts that win early are trained more, so they win more. The Switch
Transformer's auxiliary loss (Fedus et al. 2021, https://arxiv.org/abs/2101.03961) pushes towards balance:

    L_aux = E * sum_e f_e * P_e     f_e = share of routing slots given to expert e (counted, no gradient)
                                    P_e = mean router probability of expert e over the batch (differentiable)

With f counted over all k routing slots of the batch (so it sums to 1), it equals 1 when routing is balanced; its
gradient reaches the router only through P_e and lowers the probability of the experts that are overloaded.

The task: regress y = f(x) on the square [-1, 1]^2, where f is a different function in each quadrant, so that
experts can specialise. The autograd is hybrid: the router is built from Value (softmax, top-k renormalisation and
the auxiliary loss have gradients worth deriving automatically); the experts are one-hidden-layer MLPs on plain
floats with their backward pass written out, which is much faster. The two meet at g_e: the experts' side
supplies dL/dg_e = dL/dy * expert_e(x) as a number, and the router's graph carries it on from there.

Run:  python micro/micromoe.py           (full run, under a minute on one core)
      python micro/micromoe.py --quick   (fewer steps, seconds)
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


# ----------------------------------------------------------------------------------------------- data

def target(x0, x1):
    """A different function in each quadrant of [-1, 1]^2."""
    if x0 >= 0 and x1 >= 0:
        return math.sin(4 * x0)
    if x0 < 0 <= x1:
        return 2 * x0 * x1
    if x0 < 0 and x1 < 0:
        return math.cos(4 * x1)
    return x0 - 2 * x1 * x1


def make_data(rng, n):
    xs = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(n)]
    return [(x, target(*x)) for x in xs]


# ----------------------------------------------------------------------------------------------- experts (floats)

class Expert:
    """y = w2 . tanh(W1 x + b1) + b2 on plain floats, with a hand-written backward pass and Adam."""

    def __init__(self, rng, hidden):
        self.params = {"w1": [[rng.gauss(0, 1.0) for _ in range(2)] for _ in range(hidden)],
                       "b1": [0.0] * hidden, "w2": [rng.gauss(0, 1 / math.sqrt(hidden)) for _ in range(hidden)],
                       "b2": [0.0]}
        self.zero_grad()
        self.m, self.v, self.t = self._zeros(), self._zeros(), 0

    def _zeros(self):
        return {k: [[0.0] * len(r) for r in p] if k == "w1" else [0.0] * len(p) for k, p in self.params.items()}

    def zero_grad(self):
        self.grads = self._zeros()

    def forward(self, x):
        p = self.params
        h = [math.tanh(w[0] * x[0] + w[1] * x[1] + b) for w, b in zip(p["w1"], p["b1"])]
        return sum(w * hi for w, hi in zip(p["w2"], h)) + p["b2"][0], h

    def backward(self, x, h, dy):
        """Accumulate gradients given dL/dy; tanh' = 1 - tanh^2."""
        g, p = self.grads, self.params
        g["b2"][0] += dy
        for j, hj in enumerate(h):
            g["w2"][j] += dy * hj
            dpre = dy * p["w2"][j] * (1 - hj * hj)
            g["b1"][j] += dpre
            g["w1"][j][0] += dpre * x[0]
            g["w1"][j][1] += dpre * x[1]

    def step(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for key, param in self.params.items():
            rows = param if key == "w1" else [param]
            grads = self.grads[key] if key == "w1" else [self.grads[key]]
            ms = self.m[key] if key == "w1" else [self.m[key]]
            vs = self.v[key] if key == "w1" else [self.v[key]]
            for row, grow, mrow, vrow in zip(rows, grads, ms, vs):
                for i in range(len(row)):
                    mrow[i] = b1 * mrow[i] + (1 - b1) * grow[i]
                    vrow[i] = b2 * vrow[i] + (1 - b2) * grow[i] ** 2
                    row[i] -= lr * (mrow[i] / (1 - b1 ** self.t)) / (math.sqrt(vrow[i] / (1 - b2 ** self.t)) + eps)
        self.zero_grad()


# ----------------------------------------------------------------------------------------------- router (Value)

def init_router(rng, n_experts):
    """One logit per expert: w_e . x + b_e. Small weights: routing starts close to uniform."""
    return [[Value(rng.gauss(0, 0.1)) for _ in range(3)] for _ in range(n_experts)]


def router_probs(router, x):
    return softmax([w[0] * x[0] + w[1] * x[1] + w[2] for w in router])


def top_k_gates(probs, k):
    """The k most probable experts and their renormalised weights g_e = p_e / sum_{j in top-k} p_j (Values)."""
    chosen = sorted(range(len(probs)), key=lambda e: -probs[e].data)[:k]
    total = vsum([probs[e] for e in chosen])
    return chosen, [probs[e] / total for e in chosen]


def load_balancing_loss(all_probs, all_chosen, n_experts):
    """Switch Transformer auxiliary loss E * sum_e f_e * P_e over a batch.
    all_probs: per input, the E router probabilities (Values); all_chosen: per input, the chosen expert indices.
    f_e counts routing slots (a plain number: counting has no gradient); P_e is a mean of Values."""
    slots = sum(len(c) for c in all_chosen)
    fractions = [sum(e in c for c in all_chosen) / slots for e in range(n_experts)]
    mean_probs = [vsum([p[e] for p in all_probs]) / len(all_probs) for e in range(n_experts)]
    return n_experts * vsum([mean_probs[e] * fractions[e] for e in range(n_experts)])


def router_parameters(router):
    return [w for row in router for w in row]


# ----------------------------------------------------------------------------------------------- training

def moe_forward(router, experts, x, k):
    probs = router_probs(router, x)
    chosen, gates = top_k_gates(probs, k)
    outs = [experts[e].forward(x) for e in chosen]
    y = sum(g.data * out for g, (out, _) in zip(gates, outs))
    return y, probs, chosen, gates, outs


def train(seed, cfg, aux_coef, data, log):
    rng = random.Random(seed)
    experts = [Expert(rng, cfg["hidden"]) for _ in range(cfg["n_experts"])]
    router = init_router(rng, cfg["n_experts"])
    params = router_parameters(router)
    m, v = [0.0] * len(params), [0.0] * len(params)
    for step in range(cfg["steps"]):
        batch = rng.sample(data, cfg["batch"])
        surrogate, all_probs, all_chosen, loss = [], [], [], 0.0
        for x, y_true in batch:
            y, probs, chosen, gates, outs = moe_forward(router, experts, x, cfg["k"])
            dy = 2 * (y - y_true) / len(batch)  # d(mean squared error)/dy
            loss += (y - y_true) ** 2 / len(batch)
            for e, g, (out, h) in zip(chosen, gates, outs):
                experts[e].backward(x, h, dy * g.data)  # expert side: plain floats, by hand
                surrogate.append(g * (dy * out))       # router side: d(surrogate)/dg = dL/dg, a constant
            all_probs.append(probs)
            all_chosen.append(chosen)
        aux = load_balancing_loss(all_probs, all_chosen, cfg["n_experts"])
        (vsum(surrogate) + aux * aux_coef).backward()
        for expert in experts:
            expert.step(cfg["lr"])
        for i, p in enumerate(params):  # Adam for the router
            m[i] = 0.9 * m[i] + 0.1 * p.grad
            v[i] = 0.999 * v[i] + 0.001 * p.grad ** 2
            m_hat, v_hat = m[i] / (1 - 0.9 ** (step + 1)), v[i] / (1 - 0.999 ** (step + 1))
            p.data -= cfg["lr"] * m_hat / (math.sqrt(v_hat) + 1e-8)
            p.grad = 0.0
        if log and (step == 0 or (step + 1) % max(1, cfg["steps"] // 5) == 0):
            print(f"  step {step + 1:5d}/{cfg['steps']}  mse {loss:.4f}  aux {aux.data:.4f}")
    return router, experts


def evaluate(router, experts, data, cfg):
    """Test MSE and utilisation: the share of routing slots each expert received."""
    counts, mse = [0] * cfg["n_experts"], 0.0
    for x, y_true in data:
        y, _, chosen, _, _ = moe_forward(router, experts, x, cfg["k"])
        mse += (y - y_true) ** 2 / len(data)
        for e in chosen:
            counts[e] += 1
    return mse, [c / (len(data) * cfg["k"]) for c in counts]


CONFIGS = {
    "full": dict(n_experts=4, k=2, hidden=8, steps=1500, batch=32, lr=0.01, aux_coef=0.1, n_train=2000,
                 n_test=500),
    "quick": dict(n_experts=4, k=2, hidden=8, steps=250, batch=32, lr=0.02, aux_coef=0.1, n_train=1000,
                  n_test=300),
}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    started = time.time()
    data_rng = random.Random(seed)
    train_data, test_data = make_data(data_rng, cfg["n_train"]), make_data(data_rng, cfg["n_test"])
    print(f"{cfg['n_experts']} experts (MLP 2-{cfg['hidden']}-1 on floats), top-{cfg['k']} routing by a linear "
          f"router on Value; {cfg['steps']} steps of {cfg['batch']} points")
    results = {}
    for name, coef in (("with load balancing", cfg["aux_coef"]), ("without load balancing", 0.0)):
        print(f"\n{name} (aux coefficient {coef})")
        router, experts = train(seed, cfg, coef, train_data, log=True)
        mse, util = evaluate(router, experts, test_data, cfg)
        results[name] = (mse, util)
        print(f"  test mse {mse:.4f}   utilisation " + "  ".join(f"e{e} {100 * u:4.1f}%" for e, u in enumerate(util)))
        if coef:
            by_quadrant = {}
            for x, _ in test_data:
                quadrant = ("+" if x[0] >= 0 else "-") + ("+" if x[1] >= 0 else "-")
                _, _, chosen, _, _ = moe_forward(router, experts, x, cfg["k"])
                by_quadrant.setdefault(quadrant, [0] * cfg["n_experts"])
                for e in chosen:
                    by_quadrant[quadrant][e] += 1
            print("  which experts each quadrant uses (share of its routing slots):")
            for quadrant in sorted(by_quadrant):
                total = sum(by_quadrant[quadrant])
                print(f"    x0{quadrant[0]} x1{quadrant[1]}: " + "  ".join(
                    f"e{e} {100 * c / total:3.0f}%" for e, c in enumerate(by_quadrant[quadrant])))

    (mse_aux, util_aux), (mse_none, util_none) = results["with load balancing"], results["without load balancing"]
    print(f"\nsmallest expert share: {100 * min(util_aux):.1f}% with the auxiliary loss, "
          f"{100 * min(util_none):.1f}% without (balanced would be {100 / cfg['n_experts']:.0f}%)")
    metrics = {"mse_with_aux": mse_aux, "mse_without_aux": mse_none, "utilisation_with_aux": util_aux,
               "utilisation_without_aux": util_none, "min_utilisation_with_aux": min(util_aux),
               "min_utilisation_without_aux": min(util_none), "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
