"""microgrpo: Group Relative Policy Optimization on a tiny arithmetic task, in pure Python.

GRPO (Shao et al. 2024, "DeepSeekMath", https://arxiv.org/abs/2402.03300) drops PPO's value network. For each prompt
it samples a group of G answers, scores them, and uses the group itself as the baseline:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)            (population std, as posttrain.math does)
    ratio_i = pi(y_i | x) / pi_old(y_i | x)
    L = -mean_i [ min(ratio_i A_i, clip(ratio_i, 1-eps, 1+eps) A_i) - beta * KL_i ]
    KL_i = pi_ref/pi - log(pi_ref/pi) - 1                             (the "k3" estimator: unbiased, never negative)

A group where every answer got the same reward has all A_i = 0: it carries no signal (the script counts them).

The task: prompts "a+b" with a, b in 0..5; the answer is one token 0..10; reward 1 if it is the sum, else 0.
The policy is a small MLP on Value (one-hot a, one-hot b -> 16 tanh units -> 11 logits) starting from random
weights; the reference for the KL term is that starting policy, frozen.

Run:  python micro/microgrpo.py           (full run, under a minute on one core)
      python micro/microgrpo.py --quick   (fewer steps, seconds)
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


# ----------------------------------------------------------------------------------------------- the GRPO math

def group_advantages(rewards, eps=1e-4):
    """Advantages for one group of rewards (plain floats): (r - mean) / (std + eps) with the population std
    (TRL divides by the n-1 one; for a group of 8 the two differ by 7%)."""
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    return [(r - mean) / (std + eps) for r in rewards]


def grpo_loss(logps, old_logps, ref_logps, advantages, clip_eps=0.2, beta=0.04):
    """Per-sample GRPO losses -(min(ratio A, clip(ratio) A) - beta * k3). logps: Values; the rest plain floats."""
    losses = []
    for logp, old_logp, ref_logp, advantage in zip(logps, old_logps, ref_logps, advantages):
        ratio = (logp - old_logp).exp()
        unclipped, clipped = ratio * advantage, ratio.clip(1 - clip_eps, 1 + clip_eps) * advantage
        surrogate = unclipped if unclipped.data <= clipped.data else clipped  # min(): gradient through the smaller
        log_r = ref_logp - logp  # log(pi_ref / pi)
        kl = log_r.exp() - log_r - 1
        losses.append(-(surrogate - beta * kl))
    return losses


# ----------------------------------------------------------------------------------------------- the policy

N = 6          # operands 0..5
ANSWERS = 11   # sums 0..10
PROMPTS = [(a, b) for a in range(N) for b in range(N)]


def init_policy(rng, hidden):
    return {"w1": [[Value(rng.gauss(0, 0.5)) for _ in range(2 * N)] for _ in range(hidden)],
            "b1": [Value(0.0) for _ in range(hidden)],
            "w2": [[Value(rng.gauss(0, 0.5)) for _ in range(hidden)] for _ in range(ANSWERS)],
            "b2": [Value(0.0) for _ in range(ANSWERS)]}


def parameters(policy):
    return [v for key in ("w1", "w2") for row in policy[key] for v in row] + policy["b1"] + policy["b2"]


def frozen_copy(policy):
    return {k: [[Value(v.data) for v in row] for row in m] if k.startswith("w") else [Value(v.data) for v in m]
            for k, m in policy.items()}


def logprobs(policy, prompt):
    """log pi(answer | a+b) for all 11 answers. With a one-hot input, W1 x just picks two columns of W1."""
    a, b = prompt
    h = [(row[a] + row[N + b] + bias).tanh() for row, bias in zip(policy["w1"], policy["b1"])]
    return log_softmax([dot(row, h) + bias for row, bias in zip(policy["w2"], policy["b2"])])


def accuracy(policy):
    """Greedy accuracy over all 36 prompts."""
    return sum(max(range(ANSWERS), key=lambda y: logprobs(policy, p)[y].data) == sum(p) for p in PROMPTS) / len(PROMPTS)


# ----------------------------------------------------------------------------------------------- training

def grpo_step(policy, reference, opt, rng, cfg):
    prompts = rng.sample(PROMPTS, cfg["prompts_per_step"])
    batch, rewards_all, silent = [], [], 0
    for prompt in prompts:
        old = [lp.data for lp in logprobs(policy, prompt)]
        ref = [lp.data for lp in logprobs(reference, prompt)]
        answers = rng.choices(range(ANSWERS), weights=[math.exp(lp) for lp in old], k=cfg["group_size"])
        rewards = [float(y == sum(prompt)) for y in answers]
        silent += len(set(rewards)) == 1  # all right or all wrong: every advantage is 0
        advantages = group_advantages(rewards)
        batch += [(prompt, y, old[y], ref[y], adv) for y, adv in zip(answers, advantages)]
        rewards_all += rewards
    kl_sum = 0.0
    for _ in range(cfg["inner_steps"]):  # more than one update per batch, so the ratio leaves 1 and clipping matters
        logps = [logprobs(policy, prompt)[y] for prompt, y, _, _, _ in batch]
        losses = grpo_loss(logps, [b[2] for b in batch], [b[3] for b in batch], [b[4] for b in batch],
                           cfg["clip_eps"], cfg["beta"])
        loss = vsum(losses) / len(losses)
        loss.backward()
        opt.step()
        kl_sum = sum(math.exp(b[3] - lp.data) - (b[3] - lp.data) - 1 for b, lp in zip(batch, logps)) / len(batch)
    return sum(rewards_all) / len(rewards_all), silent / len(prompts), kl_sum


class Adam:
    """Adam (Kingma & Ba 2014, https://arxiv.org/abs/1412.6980) over a list of Values."""

    def __init__(self, params, lr, betas=(0.9, 0.99), eps=1e-8):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m, self.v = [0.0] * len(params), [0.0] * len(params)

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            self.m[i] = b1 * self.m[i] + (1 - b1) * p.grad
            self.v[i] = b2 * self.v[i] + (1 - b2) * p.grad ** 2
            m_hat, v_hat = self.m[i] / (1 - b1 ** self.t), self.v[i] / (1 - b2 ** self.t)
            p.data -= self.lr * m_hat / (math.sqrt(v_hat) + self.eps)
            p.grad = 0.0


CONFIGS = {
    "full": dict(hidden=16, steps=300, prompts_per_step=8, group_size=8, inner_steps=2, lr=0.01, clip_eps=0.2,
                 beta=0.02),
    "quick": dict(hidden=16, steps=80, prompts_per_step=6, group_size=8, inner_steps=2, lr=0.02, clip_eps=0.2,
                  beta=0.02),
}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    rng = random.Random(seed)
    started = time.time()
    policy = init_policy(rng, cfg["hidden"])
    reference = frozen_copy(policy)
    opt = Adam(parameters(policy), cfg["lr"])
    start_accuracy = accuracy(policy)
    print(f"task: answer a+b for a, b in 0..{N - 1}; policy: {len(parameters(policy))}-parameter MLP; "
          f"{cfg['prompts_per_step']} prompts x {cfg['group_size']} samples per step, no critic")
    print(f"greedy accuracy at start: {100 * start_accuracy:.1f}% (chance {100 / ANSWERS:.1f}%)\n")
    print("  step   mean reward   groups with no signal   KL to reference")
    history, report = [], max(1, cfg["steps"] // 8)
    for step in range(cfg["steps"]):
        history.append(grpo_step(policy, reference, opt, rng, cfg))
        if (step + 1) % report == 0:
            window = history[-report:]
            print(f"  {step + 1:4d}   {sum(h[0] for h in window) / report:11.3f}   "
                  f"{100 * sum(h[1] for h in window) / report:20.0f}%   {sum(h[2] for h in window) / report:15.4f}")
    final_accuracy = accuracy(policy)
    print(f"\ngreedy accuracy: {100 * start_accuracy:.1f}% -> {100 * final_accuracy:.1f}%")
    report_first = history[:report]
    metrics = {"accuracy_before": start_accuracy, "accuracy_after": final_accuracy,
               "reward_first": sum(h[0] for h in report_first) / len(report_first),
               "reward_last": sum(h[0] for h in history[-report:]) / report,
               "no_signal_first": sum(h[1] for h in report_first) / len(report_first),
               "kl_last": history[-1][2], "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
