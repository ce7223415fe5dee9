"""microdpo: Direct Preference Optimization of a tiny GPT, in pure Python.

DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
https://arxiv.org/abs/2305.18290) trains a policy pi_theta on pairs (chosen y_w, rejected y_l) with no reward model
and no sampling during training. With a frozen reference model pi_ref, the implicit reward of a completion is

    r(y) = beta * (log pi_theta(y) - log pi_ref(y))

and the loss is the Bradley-Terry negative log-likelihood that the chosen completion wins:

    L_DPO = -log sigmoid( r(y_w) - r(y_l) )
          = -log sigmoid( beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))] )

At step 1 pi_theta = pi_ref, both rewards are 0 and the loss is exactly ln 2. beta sets how far the policy may move:
the optimum of the KL-regularised objective is pi*(y) ~ pi_ref(y) exp(r(y) / beta), so a small beta lets it drift far.

Here:
  1. pretrain a one-layer character-level GPT on micro/names.txt; the reference is a frozen copy of it;
  2. sample names from it and pair them up with a stated preference: the LONGER name is chosen;
  3. run DPO, printing the loss (ln 2 at step 1, then falling), the chosen and rejected implicit rewards, the KL to
     the reference and the mean length of sampled names before and after;
  4. sweep beta to show that a smaller beta drifts further from the reference (larger KL, longer names).

Run:  python micro/microdpo.py           (full run, a few minutes on one core)
      python micro/microdpo.py --quick   (a smaller model and fewer steps, seconds)
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


# ----------------------------------------------------------------------------------------------- the DPO loss

def neg_log_sigmoid(z):
    """-log sigmoid(z) = log(1 + e^-z), written so that exp() never sees a large positive number."""
    if z.data >= 0:
        return (1 + (-z).exp()).log()
    return (1 + z.exp()).log() - z


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Per-pair DPO losses and implicit rewards.

    chosen_logps, rejected_logps: log pi_theta(y) summed over each completion's tokens, Values (one per pair)
    ref_chosen_logps, ref_rejected_logps: the same under the frozen reference, plain floats
    Returns (losses, chosen_rewards, rejected_rewards): losses are Values; rewards beta * (logp - ref_logp), floats.
    """
    losses, chosen_rewards, rejected_rewards = [], [], []
    for chosen, rejected, ref_chosen, ref_rejected in zip(chosen_logps, rejected_logps, ref_chosen_logps,
                                                          ref_rejected_logps):
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)  # difference of log-ratios
        losses.append(neg_log_sigmoid(margin * beta))
        chosen_rewards.append(beta * (chosen.data - ref_chosen))
        rejected_rewards.append(beta * (rejected.data - ref_rejected))
    return losses, chosen_rewards, rejected_rewards


# ----------------------------------------------------------------------------------------------- data

BOS = 0  # one token both starts and ends a name, as in makemore/microgpt
CHARS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = 1 + len(CHARS)


def load_names():
    """micro/names.txt, invented by micro/make_names.py (600 soft names, then 600 hard ones)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "names.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def encode(name):
    return [BOS] + [1 + CHARS.index(c) for c in name] + [BOS]


def decode(tokens):
    return "".join(CHARS[t - 1] for t in tokens if t != BOS)


# ----------------------------------------------------------------------------------------------- model

def matrix(rng, n_out, n_in, std):
    return [[Value(rng.gauss(0.0, std)) for _ in range(n_in)] for _ in range(n_out)]


def init_gpt(rng, n_embd, n_head, block_size):
    """A one-layer GPT-2-like transformer (RMSNorm, no biases, ReLU MLP), as in Karpathy's microgpt."""
    return {
        "wte": matrix(rng, VOCAB, n_embd, 0.1), "wpe": matrix(rng, block_size, n_embd, 0.1),
        "wq": matrix(rng, n_embd, n_embd, 0.1), "wk": matrix(rng, n_embd, n_embd, 0.1),
        "wv": matrix(rng, n_embd, n_embd, 0.1), "wo": matrix(rng, n_embd, n_embd, 0.1),
        "fc1": matrix(rng, 4 * n_embd, n_embd, 0.1), "fc2": matrix(rng, n_embd, 4 * n_embd, 0.1),
        "lm_head": matrix(rng, VOCAB, n_embd, 0.1), "n_head": n_head,
    }


def parameters(params):
    return [v for key, m in params.items() if key != "n_head" for row in m for v in row]


def frozen_copy(params):
    """The reference model: same numbers, new Values, never handed to the optimizer."""
    return {key: m if key == "n_head" else [[Value(v.data) for v in row] for row in m] for key, m in params.items()}


def linear(x, w):
    return [dot(row, x) for row in w]


def rmsnorm(x):
    scale = (vsum([xi * xi for xi in x]) / len(x) + 1e-5) ** -0.5
    return [xi * scale for xi in x]


def gpt(params, token, pos, keys, values):
    """Logits for the next token after `token` at position `pos`; keys/values are this sequence's cache, so
    attention sees every earlier position and never a later one."""
    n_head, n_embd = params["n_head"], len(params["wq"])
    head = n_embd // n_head
    x = rmsnorm([t + p for t, p in zip(params["wte"][token], params["wpe"][pos])])
    residual, x = x, rmsnorm(x)
    q, k, v = linear(x, params["wq"]), linear(x, params["wk"]), linear(x, params["wv"])
    keys.append(k)
    values.append(v)
    heads = []
    for h in range(n_head):
        lo, hi = h * head, (h + 1) * head
        weights = softmax([dot(q[lo:hi], key[lo:hi]) / math.sqrt(head) for key in keys])
        heads += [dot(weights, [value[j] for value in values]) for j in range(lo, hi)]
    x = [a + b for a, b in zip(linear(heads, params["wo"]), residual)]
    residual, x = x, rmsnorm(x)
    x = [h.relu() for h in linear(x, params["fc1"])]
    x = [a + b for a, b in zip(linear(x, params["fc2"]), residual)]
    return linear(x, params["lm_head"])


def sequence_logp(params, tokens):
    """log pi(y) = sum over t of log pi(y_t | y_<t), the end token included (so length is part of the choice)."""
    keys, values, logps = [], [], []
    for pos in range(len(tokens) - 1):
        logps.append(log_softmax(gpt(params, tokens[pos], pos, keys, values))[tokens[pos + 1]])
    return vsum(logps)


def sample(params, rng, block_size):
    keys, values, token, out = [], [], BOS, []
    for pos in range(block_size - 1):
        probs = [p.data for p in softmax(gpt(params, token, pos, keys, values))]
        token = rng.choices(range(VOCAB), weights=probs)[0]
        if token == BOS:
            break
        out.append(token)
    return decode(out)


# ----------------------------------------------------------------------------------------------- training

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


def pretrain(params, names, cfg):
    opt = Adam(parameters(params), cfg["pretrain_lr"])
    for step in range(cfg["pretrain_steps"]):
        batch = [names[(step * cfg["batch"] + i) % len(names)] for i in range(cfg["batch"])]
        loss = vsum([-sequence_logp(params, encode(n)) / (len(n) + 1) for n in batch]) / len(batch)
        loss.backward()
        opt.step()
        if step == 0 or (step + 1) % max(1, cfg["pretrain_steps"] // 4) == 0:
            print(f"  pretrain step {step + 1:4d}/{cfg['pretrain_steps']}  loss {loss.data:.4f}")


def make_pairs(params, rng, n_pairs, block_size):
    """Sample names from the pretrained model and pair them; the stated preference: the longer name is chosen."""
    pairs = []
    while len(pairs) < n_pairs:
        a, b = sample(params, rng, block_size), sample(params, rng, block_size)
        if len(a) != len(b):
            pairs.append((a, b) if len(a) > len(b) else (b, a))
    return pairs


def measure(policy, reference, rng, n, block_size):
    """Sample n names from the policy: their mean length (the preferred property) and the KL to the reference,
    KL(pi || pi_ref) = E_{y ~ pi}[log pi(y) - log pi_ref(y)], estimated from the same samples."""
    names = [sample(policy, rng, block_size) for _ in range(n)]
    kl = sum(sequence_logp(policy, encode(y)).data - sequence_logp(reference, encode(y)).data for y in names) / n
    return names, sum(len(y) for y in names) / n, kl


def pair_stats(policy, pairs, ref_logps, beta):
    """Mean DPO loss, rewards and reward accuracy over all pairs (evaluation: only .data is read)."""
    chosen = [sequence_logp(policy, encode(c)) for c, _ in pairs]
    rejected = [sequence_logp(policy, encode(r)) for _, r in pairs]
    losses, rc, rr = dpo_loss(chosen, rejected, [c for c, _ in ref_logps], [r for _, r in ref_logps], beta)
    n = len(pairs)
    return (sum(l.data for l in losses) / n, sum(rc) / n, sum(rr) / n,
            sum(c > r for c, r in zip(rc, rr)) / n)


def train_dpo(policy, pairs, ref_logps, beta, cfg, verbose):
    """DPO steps over minibatches of pairs; returns the first step's loss."""
    opt = Adam(parameters(policy), cfg["dpo_lr"])
    first = None
    for step in range(cfg["dpo_steps"]):
        idx = [(step * cfg["pair_batch"] + i) % len(pairs) for i in range(cfg["pair_batch"])]
        chosen = [sequence_logp(policy, encode(pairs[i][0])) for i in idx]
        rejected = [sequence_logp(policy, encode(pairs[i][1])) for i in idx]
        losses, rc, rr = dpo_loss(chosen, rejected, [ref_logps[i][0] for i in idx], [ref_logps[i][1] for i in idx],
                                  beta)
        loss = vsum(losses) / len(losses)
        loss.backward()
        opt.step()
        first = loss.data if first is None else first
        if verbose and (step == 0 or (step + 1) % max(1, cfg["dpo_steps"] // 6) == 0):
            print(f"  dpo step {step + 1:4d}/{cfg['dpo_steps']}  loss {loss.data:.6f}  "
                  f"reward chosen {sum(rc) / len(rc):+.3f}  rejected {sum(rr) / len(rr):+.3f}")
    return first


CONFIGS = {
    "full": dict(n_embd=16, n_head=4, block_size=16, batch=4, pretrain_steps=500, pretrain_lr=0.01,
                 n_pairs=64, pair_batch=8, dpo_steps=60, dpo_lr=0.002, beta=0.1, betas=(0.03, 0.1, 0.3, 1.0),
                 sweep_steps=30, n_measure=100, n_show=6),
    "quick": dict(n_embd=8, n_head=2, block_size=16, batch=2, pretrain_steps=60, pretrain_lr=0.03,
                  n_pairs=12, pair_batch=4, dpo_steps=15, dpo_lr=0.02, beta=0.1, betas=(0.1, 1.0),
                  sweep_steps=8, n_measure=16, n_show=4),
}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    rng = random.Random(seed)
    started = time.time()
    names = load_names()
    rng.shuffle(names)

    params = init_gpt(rng, cfg["n_embd"], cfg["n_head"], cfg["block_size"])
    print(f"1. pretrain a {len(parameters(params))}-parameter GPT on {len(names)} names")
    pretrain(params, names, cfg)
    reference = frozen_copy(params)

    pairs = make_pairs(reference, rng, cfg["n_pairs"], cfg["block_size"])
    print(f"\n2. {len(pairs)} pairs sampled from the pretrained model; preference: the longer name is chosen")
    for chosen, rejected in pairs[:3]:
        print(f"   chosen {chosen!r:16s} rejected {rejected!r}")
    # The reference never changes, so its log-probs are computed once (the core caches them the same way).
    ref_logps = [(sequence_logp(reference, encode(c)).data, sequence_logp(reference, encode(r)).data)
                 for c, r in pairs]

    before_names, before_len, _ = measure(reference, reference, random.Random(seed + 1), cfg["n_measure"],
                                          cfg["block_size"])
    print(f"\n3. DPO with beta = {cfg['beta']} (step-1 loss should be ln 2 = {math.log(2):.6f})")
    start_loss, *_ = pair_stats(params, pairs, ref_logps, cfg["beta"])
    first = train_dpo(params, pairs, ref_logps, cfg["beta"], cfg, verbose=True)
    loss, chosen_reward, rejected_reward, accuracy = pair_stats(params, pairs, ref_logps, cfg["beta"])
    after_names, after_len, kl = measure(params, reference, random.Random(seed + 1), cfg["n_measure"],
                                         cfg["block_size"])
    print(f"   loss on all pairs: {start_loss:.6f} before -> {loss:.6f} after")
    print(f"   implicit reward: chosen {chosen_reward:+.4f}  rejected {rejected_reward:+.4f}  "
          f"(chosen ahead on {100 * accuracy:.0f}% of pairs)")
    print(f"   KL(policy || reference) = {kl:.4f} nats per name  ({cfg['n_measure']} samples)")
    print(f"   mean sampled name length: {before_len:.2f} before -> {after_len:.2f} after")
    print("\n4. samples (the same random draws before and after)")
    for a, b in list(zip(before_names, after_names))[: cfg["n_show"]]:
        print(f"   before: {a:14s}  after: {b}")

    print(f"\n5. beta sweep: {cfg['sweep_steps']} steps on the same pairs from the same reference each time")
    print("   beta    loss    margin   KL to ref   mean length")
    sweep = []
    for beta in cfg["betas"]:
        policy = frozen_copy(reference)
        train_dpo(policy, pairs, ref_logps, beta, dict(cfg, dpo_steps=cfg["sweep_steps"]), verbose=False)
        b_loss, b_chosen, b_rejected, _ = pair_stats(policy, pairs, ref_logps, beta)
        _, b_len, b_kl = measure(policy, reference, random.Random(seed + 1), cfg["n_measure"], cfg["block_size"])
        sweep.append({"beta": beta, "loss": b_loss, "margin": b_chosen - b_rejected, "kl": b_kl, "length": b_len})
        print(f"   {beta:<6g} {b_loss:7.4f}  {b_chosen - b_rejected:+7.3f}   {b_kl:8.4f}   {b_len:8.2f}")

    metrics = {"step1_loss": first, "ln2": math.log(2), "loss_before": start_loss, "loss_after": loss,
               "chosen_reward": chosen_reward, "rejected_reward": rejected_reward, "reward_accuracy": accuracy,
               "kl": kl, "length_before": before_len, "length_after": after_len,
               "sweep": sweep,
               "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
