"""Parity: the micro functions compute the same numbers as torch, in float64, to 1e-9 (values and gradients).

Each loss that exists in both tiers is checked twice: against an independent torch computation written here from the
paper's formula, and against `posttrain.math` (looked up by name: a core function that goes missing fails the test).
Where the core has the function, the micro one carries its name."""

import importlib
import pkgutil

import pytest

from micro_loader import load_micro

torch = pytest.importorskip("torch")
F = torch.nn.functional
TOL = 1e-9

dpo, ppo, grpo, distill, reinforce = (load_micro(n) for n in ("microdpo", "microppo", "microgrpo", "microdistill",
                                                                 "microreinforce"))


def t64(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def core_function(*names):
    """The first of `names` that posttrain.math (or one of its submodules) defines; failing when none is there."""
    core = importlib.import_module("posttrain.math")
    modules = [core] + [importlib.import_module(f"posttrain.math.{info.name}")
                        for info in pkgutil.iter_modules(core.__path__)]
    for name in names:
        for module in modules:
            if callable(getattr(module, name, None)):
                return getattr(module, name)
    pytest.fail(f"posttrain.math has no {' / '.join(names)}: the micro tier's parity check has nothing to compare with")


def first_tensor(result):
    """Core functions return per-example values, possibly with metrics: take the loss tensor."""
    if isinstance(result, dict):
        return result.get("losses", result.get("loss"))
    if isinstance(result, (tuple, list)):
        return result[0]
    return result


# ----------------------------------------------------------------------------------------------- DPO

CHOSEN, REJECTED = [-12.3, -8.0, -20.5, -3.1, -40.0], [-11.0, -9.5, -19.0, -30.2, -2.0]
REF_CHOSEN, REF_REJECTED = [-12.0, -8.7, -21.0, -4.0, -38.0], [-11.5, -9.0, -19.2, -29.0, -2.5]
BETA = 0.3


def micro_dpo():
    chosen, rejected = [dpo.Value(x) for x in CHOSEN], [dpo.Value(x) for x in REJECTED]
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(chosen, rejected, REF_CHOSEN, REF_REJECTED, BETA)
    dpo.vsum(losses).backward()
    return [l.data for l in losses], [c.grad for c in chosen], [r.grad for r in rejected], chosen_rewards, \
        rejected_rewards


def test_dpo_loss_matches_torch():
    losses, grad_chosen, grad_rejected, chosen_rewards, rejected_rewards = micro_dpo()
    chosen, rejected = t64(CHOSEN, True), t64(REJECTED, True)
    margin = (chosen - t64(REF_CHOSEN)) - (rejected - t64(REF_REJECTED))
    expected = -F.logsigmoid(BETA * margin)
    expected.sum().backward()
    assert losses == pytest.approx(expected.tolist(), abs=TOL)
    assert grad_chosen == pytest.approx(chosen.grad.tolist(), abs=TOL)
    assert grad_rejected == pytest.approx(rejected.grad.tolist(), abs=TOL)
    assert chosen_rewards == pytest.approx((BETA * (t64(CHOSEN) - t64(REF_CHOSEN))).tolist(), abs=TOL)
    assert rejected_rewards == pytest.approx((BETA * (t64(REJECTED) - t64(REF_REJECTED))).tolist(), abs=TOL)


def test_dpo_loss_matches_core():
    fn = core_function("dpo_loss", "sigmoid_dpo_loss")
    losses, grad_chosen, grad_rejected, _, _ = micro_dpo()
    chosen, rejected = t64(CHOSEN, True), t64(REJECTED, True)
    out = first_tensor(fn(chosen_logps=chosen, rejected_logps=rejected, ref_chosen_logps=t64(REF_CHOSEN),
                          ref_rejected_logps=t64(REF_REJECTED), beta=BETA))
    out.sum().backward()
    assert losses == pytest.approx(out.tolist(), abs=TOL)
    assert grad_chosen == pytest.approx(chosen.grad.tolist(), abs=TOL)
    assert grad_rejected == pytest.approx(rejected.grad.tolist(), abs=TOL)


# ----------------------------------------------------------------------------------------------- Bradley-Terry

R_CHOSEN, R_REJECTED = [0.3, -1.2, 5.0, 40.0, -35.0], [0.1, 0.4, -2.0, 1.0, 2.0]


def test_bradley_terry_loss_and_hand_written_gradient_match_torch():
    losses, grad_chosen, grad_rejected = ppo.bradley_terry_loss(R_CHOSEN, R_REJECTED)
    chosen, rejected = t64(R_CHOSEN, True), t64(R_REJECTED, True)
    expected = -F.logsigmoid(chosen - rejected)
    expected.sum().backward()
    assert losses == pytest.approx(expected.tolist(), abs=TOL)
    assert grad_chosen == pytest.approx(chosen.grad.tolist(), abs=TOL)
    assert grad_rejected == pytest.approx(rejected.grad.tolist(), abs=TOL)


def test_bradley_terry_loss_matches_core():
    fn = core_function("bradley_terry_loss", "reward_model_loss")
    losses, grad_chosen, _ = ppo.bradley_terry_loss(R_CHOSEN, R_REJECTED)
    chosen = t64(R_CHOSEN, True)
    out = first_tensor(fn(chosen_rewards=chosen, rejected_rewards=t64(R_REJECTED)))
    out.sum().backward()
    assert losses == pytest.approx(out.tolist(), abs=TOL)
    assert grad_chosen == pytest.approx(chosen.grad.tolist(), abs=TOL)


# ----------------------------------------------------------------------------------------------- GAE

SEQS_REWARDS = [[0.1, -0.2, 0.0, 1.5], [0.0, 0.3, -1.0], [2.0]]
SEQS_VALUES = [[0.5, 0.4, -0.1, 0.9], [0.2, -0.3, 0.1], [1.1]]
GAMMA, LAMBDA = 0.97, 0.9


def padded(seqs):
    """(B, T) tensor and completion mask from ragged lists."""
    width = max(len(s) for s in seqs)
    values = [s + [0.0] * (width - len(s)) for s in seqs]
    mask = [[1.0] * len(s) + [0.0] * (width - len(s)) for s in seqs]
    return t64(values), t64(mask)


def torch_gae(rewards, values, mask, gamma, lam):
    """GAE over (B, T) with right padding: V after the last real token is 0."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=torch.float64)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def test_gae_matches_torch():
    rewards, mask = padded(SEQS_REWARDS)
    values, _ = padded(SEQS_VALUES)
    advantages, returns = torch_gae(rewards, values, mask, GAMMA, LAMBDA)
    for i, (r, v) in enumerate(zip(SEQS_REWARDS, SEQS_VALUES)):
        micro_advantages, micro_returns = ppo.token_gae(r, v, GAMMA, LAMBDA)
        assert micro_advantages == pytest.approx(advantages[i, : len(r)].tolist(), abs=TOL)
        assert micro_returns == pytest.approx(returns[i, : len(r)].tolist(), abs=TOL)
    # a hand-computed case: one step, so A = r - V
    assert ppo.token_gae([1.0], [0.25], 0.9, 0.8) == ([0.75], [1.0])


def test_gae_matches_core():
    fn = core_function("token_gae")
    rewards, mask = padded(SEQS_REWARDS)
    values, _ = padded(SEQS_VALUES)
    advantages, returns = fn(rewards=rewards, values=values, completion_mask=mask, gamma=GAMMA, gae_lambda=LAMBDA)
    for i, (r, v) in enumerate(zip(SEQS_REWARDS, SEQS_VALUES)):
        micro_advantages, micro_returns = ppo.token_gae(r, v, GAMMA, LAMBDA)
        assert micro_advantages == pytest.approx(advantages[i, : len(r)].tolist(), abs=TOL)
        assert micro_returns == pytest.approx(returns[i, : len(r)].tolist(), abs=TOL)


# ----------------------------------------------------------------------------------------------- PPO clipped loss

LOGPS = [-1.0, -2.0, -0.5, -3.0, -1.5, -0.7]
OLD_LOGPS = [-1.1, -1.5, -0.9, -3.5, -1.2, -0.7]    # ratios e^0.1, e^-0.5, e^0.4, e^0.5, e^-0.3, 1
ADVANTAGES = [1.0, 1.0, -0.5, 2.0, -1.5, 0.3]       # both signs, inside and outside the clip range
CLIP = 0.2


def micro_ppo():
    logps = [ppo.Value(x) for x in LOGPS]
    losses, clip_fraction = ppo.clipped_policy_loss(logps, OLD_LOGPS, ADVANTAGES, CLIP)
    ppo.vsum(losses).backward()
    return [l.data for l in losses], [lp.grad for lp in logps], clip_fraction


def test_clipped_policy_loss_matches_torch():
    losses, grads, clip_fraction = micro_ppo()
    logps = t64(LOGPS, True)
    ratio = torch.exp(logps - t64(OLD_LOGPS))
    adv = t64(ADVANTAGES)
    expected = -torch.min(ratio * adv, torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * adv)
    expected.sum().backward()
    assert losses == pytest.approx(expected.tolist(), abs=TOL)
    assert grads == pytest.approx(logps.grad.tolist(), abs=TOL)
    assert clip_fraction == pytest.approx(((ratio - 1).abs() > CLIP).double().mean().item())
    # The clip bites only where moving further would help: ratio > 1 + eps with A > 0, ratio < 1 - eps with A < 0.
    assert grads[3] == 0.0 and grads[4] == 0.0
    assert grads[1] != 0.0 and grads[2] != 0.0  # outside the range but on the pessimistic side: still a gradient


def test_clipped_policy_loss_matches_core():
    fn = core_function("clipped_policy_loss")
    losses, grads, _ = micro_ppo()
    logps = t64(LOGPS, True)
    out = first_tensor(fn(logps=logps, old_logps=t64(OLD_LOGPS), advantages=t64(ADVANTAGES), epsilon=CLIP))
    out.sum().backward()
    assert losses == pytest.approx(out.tolist(), abs=TOL)
    assert grads == pytest.approx(logps.grad.tolist(), abs=TOL)


# ----------------------------------------------------------------------------------------------- KL estimators

KL_LOGPS, KL_REF_LOGPS = [-1.0, -2.0, -0.5, -3.0], [-1.2, -1.0, -0.5, -4.0]


def test_kl_estimate_matches_torch():
    log_r = t64(KL_REF_LOGPS) - t64(KL_LOGPS)
    expected = {"k1": -log_r, "k2": log_r ** 2 / 2, "k3": torch.expm1(log_r) - log_r}
    for estimator, values in expected.items():
        assert ppo.kl_estimate(KL_LOGPS, KL_REF_LOGPS, estimator) == pytest.approx(values.tolist(), abs=TOL)


def test_kl_estimate_matches_core():
    fn = core_function("kl_estimate")
    for estimator in ("k1", "k2", "k3"):
        out = fn(logps=t64(KL_LOGPS), ref_logps=t64(KL_REF_LOGPS), estimator=estimator)
        assert ppo.kl_estimate(KL_LOGPS, KL_REF_LOGPS, estimator) == pytest.approx(out.tolist(), abs=TOL)


# ----------------------------------------------------------------------------------------------- GRPO

GROUPS = [[1.0, 0.0, 0.0, 1.0, 1.0], [0.2, 0.9, 0.4, 0.4, 0.1], [1.0, 1.0, 1.0, 1.0, 1.0]]


def test_group_advantages_match_torch():
    rewards = t64(GROUPS)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)  # the population std, in both tiers
    expected = (rewards - rewards.mean(dim=1, keepdim=True)) / (std + 1e-4)
    for group, row in zip(GROUPS, expected):
        assert grpo.group_advantages(group) == pytest.approx(row.tolist(), abs=TOL)
    assert grpo.group_advantages(GROUPS[2]) == [0.0] * 5  # no spread, no signal


def test_group_advantages_match_core():
    fn = core_function("group_advantages")
    out = fn(rewards=t64([r for g in GROUPS for r in g]), group_size=5)
    micro = [a for g in GROUPS for a in grpo.group_advantages(g)]
    assert micro == pytest.approx(out.flatten().tolist(), abs=TOL)


def test_grpo_loss_matches_torch():
    ref_logps, beta = [-1.2, -1.9, -0.4, -2.5, -1.0, -0.9], 0.04
    logps_v = [grpo.Value(x) for x in LOGPS]
    losses = grpo.grpo_loss(logps_v, OLD_LOGPS, ref_logps, ADVANTAGES, CLIP, beta)
    grpo.vsum(losses).backward()
    logps = t64(LOGPS, True)
    ratio = torch.exp(logps - t64(OLD_LOGPS))
    adv = t64(ADVANTAGES)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - CLIP, 1 + CLIP) * adv)
    log_r = t64(ref_logps) - logps
    expected = -(surrogate - beta * (torch.exp(log_r) - log_r - 1))
    expected.sum().backward()
    assert [l.data for l in losses] == pytest.approx(expected.tolist(), abs=TOL)
    assert [v.grad for v in logps_v] == pytest.approx(logps.grad.tolist(), abs=TOL)


# ----------------------------------------------------------------------------------------------- distillation

STUDENT = [[0.5, -1.0, 2.0, 0.1], [3.0, 0.0, -2.0, 1.0]]
TEACHER = [[1.0, -0.5, 2.5, -1.0], [0.2, 0.1, -0.3, 4.0]]
LABELS, TEMPERATURE, ALPHA = [2, 3], 2.0, 0.7


def micro_distill():
    student = [[distill.Value(x) for x in row] for row in STUDENT]
    losses = distill.distillation_loss(student, TEACHER, LABELS, TEMPERATURE, ALPHA)
    distill.vsum(losses).backward()
    return [l.data for l in losses], [[v.grad for v in row] for row in student]


def test_distillation_loss_matches_torch():
    losses, grads = micro_distill()
    student = t64(STUDENT, True)
    teacher = t64(TEACHER)
    kl = F.kl_div(F.log_softmax(student / TEMPERATURE, dim=-1), F.log_softmax(teacher / TEMPERATURE, dim=-1),
                  log_target=True, reduction="none").sum(-1)
    hard = F.cross_entropy(student, torch.tensor(LABELS), reduction="none")
    expected = ALPHA * TEMPERATURE ** 2 * kl + (1 - ALPHA) * hard
    expected.sum().backward()
    assert losses == pytest.approx(expected.tolist(), abs=TOL)
    for row, expected_row in zip(grads, student.grad.tolist()):
        assert row == pytest.approx(expected_row, abs=TOL)


def test_distillation_loss_matches_core():
    fn = core_function("distillation_loss")
    losses, grads = micro_distill()
    student = t64(STUDENT, True)
    out = first_tensor(fn(student_logits=student, teacher_logits=t64(TEACHER), labels=torch.tensor(LABELS),
                          temperature=TEMPERATURE, alpha=ALPHA))
    out.sum().backward()
    assert losses == pytest.approx(out.tolist(), abs=TOL)
    for row, expected_row in zip(grads, student.grad.tolist()):
        assert row == pytest.approx(expected_row, abs=TOL)


# ----------------------------------------------------------------------------------------------- REINFORCE

PG_LOGPS, PG_ADVANTAGES = [-1.0, -2.5, -0.3], [-0.2, 0.3, 0.0]


def micro_policy_gradient():
    logps = [reinforce.Value(x) for x in PG_LOGPS]
    losses = reinforce.policy_gradient_loss(logps, PG_ADVANTAGES)
    reinforce.vsum(losses).backward()
    return [l.data for l in losses], [v.grad for v in logps]


def test_policy_gradient_loss_matches_torch():
    losses, grads = micro_policy_gradient()
    logps = t64(PG_LOGPS, True)
    expected = -t64(PG_ADVANTAGES) * logps
    expected.sum().backward()
    assert losses == pytest.approx(expected.tolist(), abs=TOL)
    assert grads == pytest.approx(logps.grad.tolist(), abs=TOL)


def test_policy_gradient_loss_matches_core():
    fn = core_function("policy_gradient_loss")
    losses, grads = micro_policy_gradient()
    logps = t64(PG_LOGPS, True)
    out = fn(logps=logps, advantages=t64(PG_ADVANTAGES))
    out.sum().backward()
    assert losses == pytest.approx(out.tolist(), abs=TOL)
    assert grads == pytest.approx(logps.grad.tolist(), abs=TOL)
