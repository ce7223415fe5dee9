"""microlora: low-rank adaptation of a tiny GPT, in pure Python.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685)
freezes a pretrained weight matrix W (d_out x d_in) and learns a low-rank correction beside it:

    h = W x + (alpha / r) * B (A x)        A: r x d_in (small random), B: d_out x r (zeros), r << d

Because B starts at zero the adapted model is exactly the pretrained one at step 0, and only r * (d_in + d_out)
numbers per matrix are trained. Here:
  1. pretrain a one-layer character-level GPT on the soft half of micro/names.txt ("nemaia", "veleana", ...);
  2. freeze it and adapt it to the hard half ("zolagar", "duromekar", ...) with rank-r adapters on the four attention
     projections (query, key, value, output) only;
  3. print the trainable share, the validation loss on both halves before and after, and samples of both models.
The base weights are checked to be bit-for-bit unchanged afterwards and the adapter output to be exactly 0 at init.

Run:  python micro/microlora.py           (full run, a few minutes on one core)
      python micro/microlora.py --quick   (a smaller model and fewer steps, seconds)
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


# ----------------------------------------------------------------------------------------------- data

BOS = 0  # one token both starts and ends a name, as in makemore/microgpt
CHARS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = 1 + len(CHARS)


def load_names():
    """micro/names.txt: lines 1-600 are soft names, 601-1200 hard names (micro/make_names.py invents them)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "names.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    return names[: len(names) // 2], names[len(names) // 2:]


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


ATTENTION = ("wq", "wk", "wv", "wo")


def init_lora(rng, params, rank, alpha):
    """One (A, B) pair per attention projection. A is random so that B receives a gradient at step 0;
    B is zero so that B (A x) = 0 and the adapted model starts as the base model exactly."""
    n_embd = len(params["wq"])
    return {"scale": alpha / rank, **{name: (matrix(rng, rank, n_embd, 1.0 / math.sqrt(n_embd)),
                                             [[Value(0.0) for _ in range(rank)] for _ in range(n_embd)])
                                      for name in ATTENTION}}


def linear(x, w):
    return [dot(row, x) for row in w]


def lora_delta(x, lora, name):
    """(alpha / r) * B (A x): the adapter's contribution to one projection."""
    a, b = lora[name]
    return [d * lora["scale"] for d in linear(linear(x, a), b)]


def project(params, lora, name, x):
    out = linear(x, params[name])
    if lora is None:
        return out
    return [o + d for o, d in zip(out, lora_delta(x, lora, name))]


def rmsnorm(x):
    scale = (vsum([xi * xi for xi in x]) / len(x) + 1e-5) ** -0.5
    return [xi * scale for xi in x]


def gpt(params, token, pos, keys, values, lora=None):
    """Logits for the next token after `token` at position `pos`. keys/values are this sequence's cache: each call
    appends its own key and value, so attention sees every earlier position and never a later one (causality
    for free, no mask needed)."""
    n_head, n_embd = params["n_head"], len(params["wq"])
    head = n_embd // n_head
    x = rmsnorm([t + p for t, p in zip(params["wte"][token], params["wpe"][pos])])
    residual, x = x, rmsnorm(x)
    q, k, v = (project(params, lora, name, x) for name in ("wq", "wk", "wv"))
    keys.append(k)
    values.append(v)
    heads = []
    for h in range(n_head):
        lo, hi = h * head, (h + 1) * head
        weights = softmax([dot(q[lo:hi], key[lo:hi]) / math.sqrt(head) for key in keys])
        heads += [dot(weights, [value[j] for value in values]) for j in range(lo, hi)]
    x = [a + b for a, b in zip(project(params, lora, "wo", heads), residual)]
    residual, x = x, rmsnorm(x)
    x = [h.relu() for h in linear(x, params["fc1"])]
    x = [a + b for a, b in zip(linear(x, params["fc2"]), residual)]
    return linear(x, params["lm_head"])


def parameters(tree):
    """All Values in a params or lora dict, in a fixed order (lora entries are (A, B) pairs)."""
    out = []
    for key, m in tree.items():
        if key not in ("n_head", "scale"):
            out += [v for part in (m if isinstance(m, tuple) else (m,)) for row in part for v in row]
    return out


def sequence_loss(params, tokens, lora=None):
    """Mean negative log-likelihood of a name's next tokens (teacher forcing)."""
    keys, values, losses = [], [], []
    for pos in range(len(tokens) - 1):
        logits = gpt(params, tokens[pos], pos, keys, values, lora)
        losses.append(-log_softmax(logits)[tokens[pos + 1]])
    return vsum(losses) / len(losses)


def mean_loss(params, names, lora=None):
    """Validation loss: average per-token NLL over names (no backward, only .data is read)."""
    total = count = 0
    for name in names:
        tokens = encode(name)
        total += sequence_loss(params, tokens, lora).data * (len(tokens) - 1)
        count += len(tokens) - 1
    return total / count


def sample(params, rng, block_size, lora=None, temperature=0.8):
    keys, values, token, out = [], [], BOS, []
    for pos in range(block_size - 1):
        probs = [p.data for p in softmax([l / temperature for l in gpt(params, token, pos, keys, values, lora)])]
        token = rng.choices(range(VOCAB), weights=probs)[0]
        if token == BOS:
            break
        out.append(token)
    return decode(out)


# ----------------------------------------------------------------------------------------------- training

def adam(params, steps, lr, batch_loss, log_every, label):
    """Adam (Kingma & Ba 2014) with a linear learning-rate decay; batch_loss(step) builds the loss graph.
    Only `params` are updated, but backward fills .grad on every Value it reaches, so those are zeroed too."""
    m, v = [0.0] * len(params), [0.0] * len(params)
    beta1, beta2, eps = 0.9, 0.99, 1e-8
    for step in range(steps):
        loss, touched = batch_loss(step)
        loss.backward()
        step_lr = lr * (1 - step / steps)
        for i, p in enumerate(params):
            m[i] = beta1 * m[i] + (1 - beta1) * p.grad
            v[i] = beta2 * v[i] + (1 - beta2) * p.grad ** 2
            m_hat, v_hat = m[i] / (1 - beta1 ** (step + 1)), v[i] / (1 - beta2 ** (step + 1))
            p.data -= step_lr * m_hat / (math.sqrt(v_hat) + eps)
        for p in touched:
            p.grad = 0.0
        if step == 0 or (step + 1) % log_every == 0:
            print(f"  {label} step {step + 1:4d}/{steps}  loss {loss.data:.4f}")


CONFIGS = {
    "full": dict(n_embd=16, n_head=4, block_size=16, batch=4, pretrain_steps=600, pretrain_lr=0.01,
                 adapt_steps=200, adapt_lr=0.005, rank=2, alpha=4.0, n_val=60, n_samples=8),
    "quick": dict(n_embd=8, n_head=2, block_size=16, batch=2, pretrain_steps=60, pretrain_lr=0.03,
                  adapt_steps=40, adapt_lr=0.015, rank=2, alpha=4.0, n_val=12, n_samples=4),
}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    rng = random.Random(seed)
    started = time.time()
    soft, hard = load_names()
    rng.shuffle(soft)
    rng.shuffle(hard)
    soft_train, soft_val = soft[cfg["n_val"]:], soft[: cfg["n_val"]]
    hard_train, hard_val = hard[cfg["n_val"]:], hard[: cfg["n_val"]]

    params = init_gpt(rng, cfg["n_embd"], cfg["n_head"], cfg["block_size"])
    base = parameters(params)
    print(f"1. pretrain a {len(base)}-parameter GPT on the soft half ({len(soft_train)} names)")

    def pretrain_batch(step):
        names = [soft_train[(step * cfg["batch"] + i) % len(soft_train)] for i in range(cfg["batch"])]
        return vsum([sequence_loss(params, encode(n)) for n in names]) / len(names), base

    adam(base, cfg["pretrain_steps"], cfg["pretrain_lr"], pretrain_batch, max(1, cfg["pretrain_steps"] // 5),
         "pretrain")

    lora = init_lora(rng, params, cfg["rank"], cfg["alpha"])
    adapters = parameters(lora)
    probe = [Value(rng.gauss(0, 1)) for _ in range(cfg["n_embd"])]
    init_delta = max(abs(d.data) for name in ATTENTION for d in lora_delta(probe, lora, name))
    print(f"\n2. attach rank-{cfg['rank']} adapters to {', '.join(ATTENTION)}: "
          f"trainable {len(adapters)} of {len(base) + len(adapters)} parameters "
          f"({100 * len(adapters) / (len(base) + len(adapters)):.1f}%)")
    print(f"   largest |adapter output| at init: {init_delta} (B = 0, so the adapted model starts as the base)")

    before = {"soft": mean_loss(params, soft_val), "hard": mean_loss(params, hard_val)}
    base_snapshot = [p.data for p in base]

    def adapt_batch(step):
        names = [hard_train[(step * cfg["batch"] + i) % len(hard_train)] for i in range(cfg["batch"])]
        loss = vsum([sequence_loss(params, encode(n), lora) for n in names]) / len(names)
        return loss, base + adapters

    adam(adapters, cfg["adapt_steps"], cfg["adapt_lr"], adapt_batch, max(1, cfg["adapt_steps"] // 5), "adapt")
    base_unchanged = base_snapshot == [p.data for p in base]
    after = {"soft": mean_loss(params, soft_val, lora), "hard": mean_loss(params, hard_val, lora)}

    # For comparison: full fine-tuning of a copy of the base, same data, steps and learning rate.
    # LoRA learns less and forgets less (Biderman et al. 2024, https://arxiv.org/abs/2405.09673).
    tuned = {key: m if key == "n_head" else [[Value(v.data) for v in row] for row in m] for key, m in params.items()}

    def finetune_batch(step):
        names = [hard_train[(step * cfg["batch"] + i) % len(hard_train)] for i in range(cfg["batch"])]
        return vsum([sequence_loss(tuned, encode(n)) for n in names]) / len(names), parameters(tuned)

    print("   (for comparison, full fine-tuning of every weight, same steps and learning rate)")
    adam(parameters(tuned), cfg["adapt_steps"], cfg["adapt_lr"], finetune_batch, cfg["adapt_steps"], "full")
    full = {"soft": mean_loss(tuned, soft_val), "hard": mean_loss(tuned, hard_val)}

    print("\n3. validation loss (nats per character)   base model   base + adapters   full fine-tuning")
    for half in ("soft", "hard"):
        tag = "  <- adapted to this half" if half == "hard" else "  <- the other half"
        print(f"   {half} half{'':28s}{before[half]:8.4f}   {after[half]:10.4f}   {full[half]:20.4f}{tag}")
    print(f"   base weights bit-for-bit unchanged after adaptation: {base_unchanged}")

    print("\n4. samples (the same random draws for both models)")
    for i in range(cfg["n_samples"]):
        a = sample(params, random.Random(seed + i), cfg["block_size"])
        b = sample(params, random.Random(seed + i), cfg["block_size"], lora)
        print(f"   base: {a:14s}  adapted: {b}")

    metrics = {"trainable": len(adapters), "total": len(base) + len(adapters),
               "trainable_share": len(adapters) / (len(base) + len(adapters)), "adapter_init_max_abs": init_delta,
               "soft_loss_before": before["soft"], "soft_loss_after": after["soft"],
               "hard_loss_before": before["hard"], "hard_loss_after": after["hard"],
               "full_finetune_soft_loss": full["soft"], "full_finetune_hard_loss": full["hard"],
               "base_unchanged": base_unchanged, "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
