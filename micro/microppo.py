"""microppo: PPO from a learned reward model (RLHF) on a tiny GPT, in pure Python.

The RLHF recipe (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155) in three parts, at toy scale:

1. Reward model, trained on pairwise preferences with the Bradley-Terry loss:
       L_BT = -log sigmoid( r(y_w) - r(y_l) )
2. Per-token rewards: the reward model's score at the last token, and at every token a KL penalty to the frozen
   reference, r_t = -kl_coef * (log pi(y_t) - log pi_ref(y_t)), so the policy is paid for reward but charged for drift.
3. PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) with advantages from GAE (Schulman et al. 2015,
   https://arxiv.org/abs/1506.02438):
       delta_t = r_t + gamma V(s_{t+1}) - V(s_t),      A_t = sum_k (gamma lambda)^k delta_{t+k}
       ratio_t = pi(y_t) / pi_old(y_t),   L_clip = -mean_t min( ratio_t A_t, clip(ratio_t, 1-eps, 1+eps) A_t )
   Several epochs over each batch of samples: after the first update the ratio leaves 1 and clipping starts to bite
   (the clip fraction printed is the share of tokens whose ratio is outside [1-eps, 1+eps]).

The autograd is hybrid: only the policy (a one-layer character-level GPT) is built from Value, because only it needs
gradients through a deep graph. The reward model and the value function are linear in hand-made features, so their
gradients fit on one line each and are written out by hand on plain floats (and run far faster).

The task: labelers (a hidden scoring rule the script knows but the reward model must learn from pairs) prefer names
rich in vowels, and names ending in "a" most of all. The policy is pretrained on micro/names.txt, then tuned by PPO.

Run:  python micro/microppo.py           (full run, a few minutes on one core)
      python micro/microppo.py --quick   (a smaller model and fewer steps, seconds)
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


# ----------------------------------------------------------------------------------------------- the losses

def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """Per pair -log sigmoid(r_w - r_l) on plain floats, with its gradient written by hand:
    d/dr_w = -sigmoid(r_l - r_w) and d/dr_l = +sigmoid(r_l - r_w). Returns (losses, grad_chosen, grad_rejected)."""
    losses, grad_chosen, grad_rejected = [], [], []
    for chosen, rejected in zip(chosen_rewards, rejected_rewards):
        margin = chosen - rejected
        # log(1 + e^-m), in the form that never exponentiates a large positive number
        losses.append(math.log1p(math.exp(-margin)) if margin >= 0 else math.log1p(math.exp(margin)) - margin)
        p_wrong = 1.0 / (1.0 + math.exp(margin)) if margin >= 0 else math.exp(-margin) / (1.0 + math.exp(-margin))
        grad_chosen.append(-p_wrong)
        grad_rejected.append(p_wrong)
    return losses, grad_chosen, grad_rejected


def token_gae(rewards, values, gamma=1.0, gae_lambda=0.95):
    """Generalized advantage estimation over the T tokens of one completion (plain floats); the core's token_gae
    does the same for a padded batch.
    values[t] = V(s_t); the value after the last step is 0 (the name has ended). Returns (advantages, returns),
    with returns = advantages + values: the value function's regression target."""
    advantages, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * gae_lambda * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values)]


def clipped_policy_loss(logps, old_logps, advantages, epsilon_low=0.2):
    """Per-token PPO clipped losses -min(ratio A, clip(ratio, 1-eps, 1+eps) A) and the clip fraction (the share of
    tokens with |ratio - 1| > eps). logps: Values under the current policy; old_logps, advantages: floats from the
    policy that sampled."""
    losses, clipped = [], 0
    for logp, old_logp, advantage in zip(logps, old_logps, advantages):
        ratio = (logp - old_logp).exp()
        unclipped, clipped_term = ratio * advantage, ratio.clip(1 - epsilon_low, 1 + epsilon_low) * advantage
        # min() of two Values: take the smaller one, so the gradient flows through it alone. When the clipped term
        # wins, its clip() has zero gradient: the update stops pushing that token further.
        losses.append(-(unclipped if unclipped.data <= clipped_term.data else clipped_term))
        clipped += abs(ratio.data - 1) > epsilon_low
    return losses, clipped / max(len(losses), 1)


def kl_estimate(logps, ref_logps, estimator="k3"):
    """Per-token estimates of KL(pi || pi_ref) from tokens sampled by pi (Schulman, "Approximating KL divergence",
    http://joschu.net/blog/kl-approx.html). With log r = ref_logp - logp:
    k1 = -log r (unbiased, can be negative), k2 = (log r)^2 / 2 (low variance, biased), k3 = (r - 1) - log r
    (unbiased and never negative). Plain floats in, a list of floats out."""
    log_r = [ref - lp for lp, ref in zip(logps, ref_logps)]
    if estimator == "k1":
        return [-x for x in log_r]
    if estimator == "k2":
        return [x * x / 2 for x in log_r]
    return [math.expm1(x) - x for x in log_r]


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



def token_logps(params, tokens):
    """log pi(y_t | y_<t) for every next token of a name, as Values."""
    keys, values, logps = [], [], []
    for pos in range(len(tokens) - 1):
        logps.append(log_softmax(gpt(params, tokens[pos], pos, keys, values))[tokens[pos + 1]])
    return logps


# ----------------------------------------------------------------------------------------------- plain-float parts

VOWELS = "aeiou"


def labeler_score(name):
    """The hidden preference the labelers follow: share of vowels, plus a bonus for ending in "a"."""
    return sum(c in VOWELS for c in name) / max(len(name), 1) + 0.5 * name.endswith("a")


def name_features(name):
    """phi(y) for the reward model: letter frequencies, the last letter (one-hot), the length."""
    n = max(len(name), 1)
    return ([name.count(c) / n for c in CHARS] + [float(name[-1:] == c) for c in CHARS] + [len(name) / 10])


def reward_model(weights, name):
    return sum(w * f for w, f in zip(weights, name_features(name)))


def train_reward_model(train_pairs, epochs, lr):
    """Gradient descent on the mean Bradley-Terry loss; the gradient of r = w . phi(y) w.r.t. w is phi(y)."""
    weights = [0.0] * len(name_features("a"))
    feats = [(name_features(c), name_features(r)) for c, r in train_pairs]
    for epoch in range(epochs):
        chosen = [sum(w * f for w, f in zip(weights, fc)) for fc, _ in feats]
        rejected = [sum(w * f for w, f in zip(weights, fr)) for _, fr in feats]
        losses, grad_chosen, grad_rejected = bradley_terry_loss(chosen, rejected)
        grad = [0.0] * len(weights)
        for (fc, fr), gc, gr in zip(feats, grad_chosen, grad_rejected):
            for i in range(len(weights)):
                grad[i] += (gc * fc[i] + gr * fr[i]) / len(feats)
        weights = [w - lr * g for w, g in zip(weights, grad)]
        if epoch == 0 or (epoch + 1) % max(1, epochs // 4) == 0:
            print(f"  reward model epoch {epoch + 1:4d}/{epochs}  Bradley-Terry loss {sum(losses) / len(losses):.4f}")
    return weights


def pair_accuracy(weights, pairs):
    return sum(reward_model(weights, c) > reward_model(weights, r) for c, r in pairs) / len(pairs)


def state_features(tokens, t, block_size):
    """Features of the state before token t+1 is chosen: position, current token, vowel share so far."""
    prefix = [CHARS[x - 1] for x in tokens[1: t + 1]]
    vowel_share = sum(c in VOWELS for c in prefix) / len(prefix) if prefix else 0.0
    return ([float(t == p) for p in range(block_size)] + [float(tokens[t] == k) for k in range(VOCAB)]
            + [vowel_share, 1.0])


def value(weights, feats):
    return sum(w * f for w, f in zip(weights, feats))


# ----------------------------------------------------------------------------------------------- PPO

def rollout(policy, reference, rm_weights, value_weights, rng, cfg):
    """Sample one name and score it: per-token old/ref log-probs, rewards, values, advantages, returns."""
    tokens = encode(sample(policy, rng, cfg["block_size"]))
    old = [lp.data for lp in token_logps(policy, tokens)]
    ref = [lp.data for lp in token_logps(reference, tokens)]
    score = reward_model(rm_weights, decode(tokens))
    rewards = [-cfg["kl_coef"] * k for k in kl_estimate(old, ref, "k1")]
    rewards[-1] += score  # the reward model pays once, when the name ends
    feats = [state_features(tokens, t, cfg["block_size"]) for t in range(len(tokens) - 1)]
    values = [value(value_weights, f) for f in feats]
    advantages, returns = token_gae(rewards, values, cfg["gamma"], cfg["gae_lambda"])
    return {"tokens": tokens, "old": old, "ref": ref, "score": score, "feats": feats, "advantages": advantages,
            "returns": returns}


def ppo_iteration(policy, reference, opt, rm_weights, value_weights, rng, cfg):
    batch = [rollout(policy, reference, rm_weights, value_weights, rng, cfg) for _ in range(cfg["rollouts"])]
    # Whiten advantages over the batch: the same update size whatever the reward scale.
    flat = [a for ro in batch for a in ro["advantages"]]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / len(flat)) + 1e-8
    for ro in batch:
        ro["advantages"] = [(a - mean) / std for a in ro["advantages"]]

    clipped_per_epoch = []  # the share of tokens clipped in each epoch: 0 at first, rising as the policy moves
    for epoch in range(cfg["ppo_epochs"]):
        order = list(range(len(batch)))
        rng.shuffle(order)
        clipped, tokens = 0.0, 0
        for start in range(0, len(order), cfg["minibatch"]):
            losses = []
            for i in order[start: start + cfg["minibatch"]]:
                ro = batch[i]
                token_losses, fraction = clipped_policy_loss(token_logps(policy, ro["tokens"]), ro["old"],
                                                             ro["advantages"], cfg["clip_eps"])
                losses += token_losses
                clipped += fraction * len(token_losses)
                tokens += len(token_losses)
            loss = vsum(losses) / len(losses)  # mean over tokens
            loss.backward()
            opt.step()
        clipped_per_epoch.append(clipped / tokens)

    # The value function: a few passes of SGD on 0.5 (V(s) - return)^2, whose gradient is (V(s) - return) phi(s).
    value_loss = 0.0
    for _ in range(cfg["value_epochs"]):
        value_loss, count = 0.0, 0
        for ro in batch:
            for feats, target in zip(ro["feats"], ro["returns"]):
                error = value(value_weights, feats) - target
                value_loss, count = value_loss + 0.5 * error ** 2, count + 1
                for i, f in enumerate(feats):
                    if f:
                        value_weights[i] -= cfg["value_lr"] * error * f
        value_loss /= count
    kl = sum(sum(kl_estimate(ro["old"], ro["ref"], "k1")) for ro in batch) / len(batch)
    return {"score": sum(ro["score"] for ro in batch) / len(batch), "kl": kl, "value_loss": value_loss,
            "clip_fraction": sum(clipped_per_epoch) / len(clipped_per_epoch),
            "clip_fraction_last_epoch": clipped_per_epoch[-1]}


def measure(policy, reference, rm_weights, seed, n, block_size):
    """n names sampled from the policy: mean reward-model score, mean labeler score, KL to the reference (k1, k3)."""
    rng = random.Random(seed)
    names = [sample(policy, rng, block_size) for _ in range(n)]
    k1 = k3 = 0.0
    for name in names:
        tokens = encode(name)
        logps = [lp.data for lp in token_logps(policy, tokens)]
        ref_logps = [lp.data for lp in token_logps(reference, tokens)]
        k1 += sum(kl_estimate(logps, ref_logps, "k1")) / n
        k3 += sum(kl_estimate(logps, ref_logps, "k3")) / n
    return {"names": names, "reward": sum(reward_model(rm_weights, y) for y in names) / n,
            "labeler": sum(labeler_score(y) for y in names) / n, "kl_k1": k1, "kl_k3": k3}


CONFIGS = {
    "full": dict(n_embd=16, n_head=4, block_size=16, batch=4, pretrain_steps=500, pretrain_lr=0.01,
                 rm_epochs=300, rm_lr=2.0, iterations=30, rollouts=16, minibatch=8, ppo_epochs=4, lr=0.001,
                 clip_eps=0.2, kl_coef=0.2, gamma=1.0, gae_lambda=0.95, value_epochs=3, value_lr=0.05,
                 n_measure=100, n_show=6),
    "quick": dict(n_embd=8, n_head=2, block_size=16, batch=2, pretrain_steps=60, pretrain_lr=0.03,
                  rm_epochs=100, rm_lr=2.0, iterations=6, rollouts=8, minibatch=4, ppo_epochs=3, lr=0.01,
                  clip_eps=0.2, kl_coef=0.05, gamma=1.0, gae_lambda=0.95, value_epochs=3, value_lr=0.05,
                  n_measure=24, n_show=4),
}


def main(quick=False, seed=42):
    cfg = CONFIGS["quick" if quick else "full"]
    rng = random.Random(seed)
    started = time.time()
    names = load_names()
    rng.shuffle(names)

    print("1. reward model: a linear score of name features, trained on labeled pairs with Bradley-Terry")
    def labeled_pairs(pool, n):
        pairs = []
        while len(pairs) < n:
            a, b = rng.sample(pool, 2)
            if labeler_score(a) != labeler_score(b):
                pairs.append((a, b) if labeler_score(a) > labeler_score(b) else (b, a))
        return pairs
    split = int(0.7 * len(names))  # held-out pairs are built from names the reward model never saw
    train_pairs, heldout_pairs = labeled_pairs(names[:split], 600), labeled_pairs(names[split:], 200)
    rm_weights = train_reward_model(train_pairs, cfg["rm_epochs"], cfg["rm_lr"])
    rm_train_accuracy, rm_heldout_accuracy = pair_accuracy(rm_weights, train_pairs), pair_accuracy(rm_weights,
                                                                                                  heldout_pairs)
    print(f"   pair accuracy: train {100 * rm_train_accuracy:.1f}%  held-out {100 * rm_heldout_accuracy:.1f}%")

    params = init_gpt(rng, cfg["n_embd"], cfg["n_head"], cfg["block_size"])
    print(f"\n2. pretrain the policy, a {len(parameters(params))}-parameter GPT, on {len(names)} names")
    pretrain(params, names, cfg)
    reference = frozen_copy(params)
    before = measure(reference, reference, rm_weights, seed + 1, cfg["n_measure"], cfg["block_size"])

    print(f"\n3. PPO: {cfg['iterations']} iterations of {cfg['rollouts']} sampled names, {cfg['ppo_epochs']} epochs"
          f" each, clip eps {cfg['clip_eps']}, KL coefficient {cfg['kl_coef']}")
    opt = Adam(parameters(params), cfg["lr"])
    value_weights = [0.0] * len(state_features(encode("a"), 0, cfg["block_size"]))
    history = []
    for it in range(cfg["iterations"]):
        stats = ppo_iteration(params, reference, opt, rm_weights, value_weights, rng, cfg)
        history.append(stats)
        if it == 0 or (it + 1) % max(1, cfg["iterations"] // 6) == 0:
            print(f"  iter {it + 1:3d}/{cfg['iterations']}  reward {stats['score']:+.3f}  KL {stats['kl']:.3f}  "
                  f"clip fraction {stats['clip_fraction']:.3f} (last epoch {stats['clip_fraction_last_epoch']:.3f})"
                  f"  value loss {stats['value_loss']:.4f}")

    after = measure(params, reference, rm_weights, seed + 1, cfg["n_measure"], cfg["block_size"])
    print(f"\n4. before -> after PPO ({cfg['n_measure']} samples each)")
    print(f"   reward-model score   {before['reward']:+.3f} -> {after['reward']:+.3f}")
    print(f"   labeler score        {before['labeler']:.3f} -> {after['labeler']:.3f}   (the hidden preference)")
    print(f"   KL to reference      k1 {after['kl_k1']:.3f}, k3 {after['kl_k3']:.3f} nats per name")
    clip_fraction = sum(h["clip_fraction"] for h in history) / len(history)
    print(f"   mean clip fraction over training: {clip_fraction:.3f}")
    print("\n5. samples (the same random draws before and after)")
    for a, b in list(zip(before["names"], after["names"]))[: cfg["n_show"]]:
        print(f"   before: {a:14s}  after: {b}")

    metrics = {"rm_train_accuracy": rm_train_accuracy, "rm_heldout_accuracy": rm_heldout_accuracy,
               "reward_before": before["reward"], "reward_after": after["reward"],
               "labeler_before": before["labeler"], "labeler_after": after["labeler"], "kl_k1": after["kl_k1"],
               "kl_k3": after["kl_k3"], "clip_fraction": clip_fraction,
               "max_clip_fraction": max(h["clip_fraction"] for h in history),
               "seconds": round(time.time() - started, 1)}
    print("\nsummary " + json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps (seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
