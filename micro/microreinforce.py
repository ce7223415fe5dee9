"""microreinforce: the REINFORCE policy gradient, with and without a baseline, in pure Python.

REINFORCE (Williams 1992, "Simple statistical gradient-following algorithms for connectionist reinforcement
learning", https://doi.org/10.1007/BF00992696) estimates the gradient of the expected reward
J = E_{y ~ pi}[R(y)] from samples alone:

    grad J = E[ R(y) * grad log pi(y) ]          so a loss to minimise is   L = -(R(y) - b) * log pi(y)

Subtracting a baseline b that does not depend on the sampled y leaves the expectation unchanged, because
E[grad log pi(y)] = sum_y grad pi(y) = grad 1 = 0, but it can shrink the variance a lot: when every reward is
positive, the plain estimator pushes up every sample it draws and only the differences in size carry information.

The task: a policy writes a word of 8 letters from "abcde", one independent softmax per position (40 logits, all
Value). The reward is 1 plus the share of positions that match a hidden word, so always between 1 and 2. The script
prints the variance of single-sample gradient estimates with and without a baseline, then trains both ways from the
same start (the baseline is then a running mean of past rewards) and prints the reward as it rises.

Run:  python micro/microreinforce.py           (full run, under a minute on one core)
      python micro/microreinforce.py --quick   (fewer samples and steps, seconds)
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


ALPHABET = "abcde"
TARGET = "badcebad"  # the hidden word; the policy only ever sees rewards


def policy_gradient_loss(logps, advantages):
    """Per-sample REINFORCE losses -A * log pi(y), with A = R - b. logps: Values; advantages: plain floats."""
    return [-advantage * logp for logp, advantage in zip(logps, advantages)]


def init_policy():
    """All-zero logits: the uniform policy, the same start for every run."""
    return [[Value(0.0) for _ in ALPHABET] for _ in TARGET]


def sample(policy, rng):
    """A word and its log-probability log pi(y) = sum over positions of log p(letter) (a Value)."""
    word, logps = [], []
    for logits in policy:
        logprobs = log_softmax(logits)
        i = rng.choices(range(len(ALPHABET)), weights=[math.exp(lp.data) for lp in logprobs])[0]
        word.append(ALPHABET[i])
        logps.append(logprobs[i])
    return "".join(word), vsum(logps)


def reward(word):
    """1 for writing a word at all, plus the share of letters that match: always positive, as rewards often are."""
    return 1.0 + sum(a == b for a, b in zip(word, TARGET)) / len(TARGET)


def parameters(policy):
    return [v for row in policy for v in row]


def gradient_variance(policy, rng, n, baseline):
    """Draw n single-sample gradient estimates of the loss and return the variance per parameter, summed over
    parameters (the trace of the estimator's covariance), and the mean gradient's norm (the signal)."""
    params = parameters(policy)
    grads = []
    for _ in range(n):
        word, logp = sample(policy, rng)
        policy_gradient_loss([logp], [reward(word) - baseline])[0].backward()
        grads.append([p.grad for p in params])
        for p in params:
            p.grad = 0.0
    means = [sum(g[i] for g in grads) / n for i in range(len(params))]
    variance = sum(sum((g[i] - means[i]) ** 2 for g in grads) / (n - 1) for i in range(len(params)))
    return variance, math.sqrt(sum(m * m for m in means))


def train(rng, cfg, use_baseline):
    policy = init_policy()
    params = parameters(policy)
    baseline, curve = 0.0, []
    for step in range(cfg["steps"]):
        samples = [sample(policy, rng) for _ in range(cfg["batch"])]
        rewards = [reward(word) for word, _ in samples]
        b = baseline if use_baseline else 0.0
        loss = vsum(policy_gradient_loss([logp for _, logp in samples], [r - b for r in rewards])) / len(samples)
        loss.backward()
        for p in params:  # plain SGD: the variance of the gradient is the variance of the update
            p.data -= cfg["lr"] * p.grad
            p.grad = 0.0
        # The baseline is updated after the step, so it never depends on the samples it is subtracted from.
        baseline = 0.9 * baseline + 0.1 * sum(rewards) / len(rewards) if step else sum(rewards) / len(rewards)
        curve.append(sum(rewards) / len(rewards))
    return policy, curve


def greedy(policy):
    return "".join(ALPHABET[max(range(len(ALPHABET)), key=lambda i: logits[i].data)] for logits in policy)


CONFIGS = {"full": dict(n_variance=2000, steps=300, batch=8, lr=0.5, report=50),
           "quick": dict(n_variance=300, steps=250, batch=8, lr=0.5, report=50)}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    started = time.time()
    print(f"policy: {len(TARGET)} positions x {len(ALPHABET)} letters of logits; "
          "reward = 1 + share of letters matching a hidden word")
    # At the uniform start the expected reward is exactly 1 + 1/5; use that as the baseline for the variance check.
    policy = init_policy()
    expected = 1 + 1 / len(ALPHABET)
    var_plain, signal = gradient_variance(policy, random.Random(seed), cfg["n_variance"], 0.0)
    var_base, signal_base = gradient_variance(policy, random.Random(seed), cfg["n_variance"], expected)
    print(f"\n1. variance of a single-sample gradient estimate at the uniform policy ({cfg['n_variance']} draws)")
    print(f"   without baseline: {var_plain:.4f}   (norm of the mean gradient {signal:.4f})")
    print(f"   with baseline b = E[R] = {expected:.2f}: {var_base:.4f}   (norm of the mean gradient {signal_base:.4f})")
    print(f"   the baseline cuts the variance by {var_plain / var_base:.1f}x and leaves the mean where it was")

    print(f"\n2. training, {cfg['batch']} samples per step, SGD lr {cfg['lr']} (the same random draws for both)")
    plain_policy, plain_curve = train(random.Random(seed + 1), cfg, use_baseline=False)
    base_policy, base_curve = train(random.Random(seed + 1), cfg, use_baseline=True)
    print("   step   mean reward: no baseline   with baseline")
    window = cfg["report"]
    for end in range(window, cfg["steps"] + 1, window):
        print(f"   {end:4d}   {sum(plain_curve[end - window:end]) / window:22.3f}   "
              f"{sum(base_curve[end - window:end]) / window:13.3f}")
    print(f"   greedy word: no baseline {greedy(plain_policy)}, with baseline {greedy(base_policy)}  "
          f"(hidden word: {TARGET})")
    print("   without a baseline every sampled letter is pushed up, right or wrong; the noise can lock in a wrong one")

    final_plain = sum(plain_curve[-window:]) / window
    final_base = sum(base_curve[-window:]) / window
    metrics = {"variance_without_baseline": var_plain, "variance_with_baseline": var_base,
               "reward_start": expected, "final_reward_without_baseline": final_plain,
               "final_reward_with_baseline": final_base, "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
