"""Distillation divergences: hand-computed values, the T and beta limits, TRL's per-token values, top-k truncation, and
the chunked computation against the full-logits one (values, gradients, memory)."""

import gc
import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from posttrain.math.distillation import (
    DIVERGENCES,
    chunked_distillation_loss,
    distillation_loss,
    divergence_from_logps,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    token_divergence,
    total_variation,
)

# teacher p = (1/2, 1/2), student q = (3/4, 1/4)
P = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.75, 0.25]], dtype=torch.float64)


def _by_hand(name):
    if name == "forward_kl":
        return 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    if name == "reverse_kl":
        return 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    if name == "tv":
        return 0.5 * (0.25 + 0.25)
    m = (0.625, 0.375)  # beta = 0.5: m = (p + q) / 2
    return 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + \
        0.5 * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1]))


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_divergences_match_hand_computed_values(name):
    value = divergence_from_logps(Q.log(), P.log(), name, beta=0.5)
    assert value.item() == pytest.approx(_by_hand(name), abs=1e-12)


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_temperature_softens_both_and_scales_by_t_squared(name):
    """Logits (2 ln 3, 0) at T = 2 are q = (3/4, 1/4); teacher logits (0, 0) are p = (1/2, 1/2) at any T."""
    student = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.float64)
    teacher = torch.zeros(1, 2, dtype=torch.float64)
    value = token_divergence(student, teacher, name, beta=0.5, temperature=2.0)
    assert value.item() == pytest.approx(4 * _by_hand(name), abs=1e-12)


def test_forward_kl_gradient_is_t_times_q_minus_p():
    """d/dz^s of T^2 KL(p_T || q_T) = T (q_T - p_T) (Hinton et al. 2015, section 2.1)."""
    student = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[0.3, 0.2, -1.0]], dtype=torch.float64)
    token_divergence(student, teacher, "forward_kl", temperature=3.0).sum().backward()
    expected = 3.0 * (torch.softmax(student.detach() / 3, -1) - torch.softmax(teacher / 3, -1))
    torch.testing.assert_close(student.grad, expected, atol=1e-12, rtol=0)


def test_beta_ends_are_the_two_kls_and_the_jsd_approaches_them():
    torch.manual_seed(0)
    s, t = torch.log_softmax(torch.randn(5, 11, dtype=torch.float64), -1), \
        torch.log_softmax(torch.randn(5, 11, dtype=torch.float64), -1)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), forward_kl(s, t))
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), reverse_kl(s, t))
    # JSD_beta / beta -> KL(p || q) as beta -> 0, and JSD_beta / (1 - beta) -> KL(q || p) as beta -> 1
    torch.testing.assert_close(generalized_jsd(s, t, 1e-6) / 1e-6, forward_kl(s, t), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(generalized_jsd(s, t, 1 - 1e-6) / 1e-6, reverse_kl(s, t), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, 1.5)


@pytest.mark.parametrize("name", list(DIVERGENCES))
@pytest.mark.parametrize("teacher_top_k", [0, 3])
def test_identical_distributions_give_zero(name, teacher_top_k):
    logits = torch.randn(4, 9, dtype=torch.float64)
    value = token_divergence(logits, logits.clone(), name, beta=0.3, temperature=1.7, teacher_top_k=teacher_top_k)
    torch.testing.assert_close(value, torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_matches_trl_generalized_jsd_per_token_at_t1(beta):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 13, dtype=torch.float64), torch.randn(2, 3, 13, dtype=torch.float64)
    trl = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, reduction="none").sum(-1)
    ours = token_divergence(student.view(6, 13), teacher.view(6, 13), "jsd", beta=beta).view(2, 3)
    torch.testing.assert_close(ours, trl, atol=1e-12, rtol=0)


def test_top_k_is_exact_with_the_whole_vocabulary_and_a_lower_bound_otherwise():
    torch.manual_seed(2)
    s, t = torch.randn(6, 20, dtype=torch.float64), torch.randn(6, 20, dtype=torch.float64)
    full = token_divergence(s, t, "forward_kl")
    torch.testing.assert_close(token_divergence(s, t, "forward_kl", teacher_top_k=20), full, atol=1e-12, rtol=0)
    for k in (1, 5, 19):  # collapsing bins never increases a KL (data-processing inequality)
        assert (token_divergence(s, t, "forward_kl", teacher_top_k=k) <= full + 1e-12).all()


def test_top_k_is_exact_when_the_tails_are_proportional():
    """Student and teacher differ only on the teacher's top 2 tokens; their tails are equal up to scale."""
    teacher = torch.tensor([[4.0, 3.0, 0.5, 0.1, -1.0]], dtype=torch.float64)
    student = teacher.clone()
    student[0, :2] = torch.tensor([2.0, 3.5])
    for name in ("forward_kl", "reverse_kl"):
        torch.testing.assert_close(token_divergence(student, teacher, name, teacher_top_k=2),
                                   token_divergence(student, teacher, name), atol=1e-12, rtol=0)


def test_distillation_loss_mixes_soft_and_hard_terms():
    student = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1])
    ce = -torch.log_softmax(student, -1)[0, 1]
    soft = token_divergence(student, teacher, temperature=2.0)
    assert distillation_loss(student, teacher, labels, 2.0, alpha=0.0).item() == pytest.approx(ce.item(), abs=1e-12)
    assert distillation_loss(student, teacher, labels, 2.0, alpha=0.25).item() == pytest.approx(
        (0.25 * soft + 0.75 * ce).item(), abs=1e-12)


def _inputs(seed=0, n=10, h_s=6, h_t=5, v=17, bias=False):
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(n, h_s, dtype=torch.float64, generator=g, requires_grad=True)
    s_weight = torch.randn(v, h_s, dtype=torch.float64, generator=g, requires_grad=True)
    s_bias = torch.randn(v, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    t_hidden = torch.randn(n, h_t, dtype=torch.float64, generator=g, requires_grad=True)
    t_weight = torch.randn(v, h_t, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    return s_hidden, s_weight, s_bias, t_hidden, t_weight, targets


@pytest.mark.parametrize("name", list(DIVERGENCES))
@pytest.mark.parametrize("chunk_size,teacher_top_k,bias", [(1, 0, False), (3, 0, True), (4, 5, False), (100, 0, False)])
def test_chunked_equals_full_logits_values_and_gradients(name, chunk_size, teacher_top_k, bias):
    s_hidden, s_weight, s_bias, t_hidden, t_weight, targets = _inputs(bias=bias)
    student = [s_hidden, s_weight] + ([s_bias] if bias else [])
    s_logits = s_hidden @ s_weight.t() + (s_bias if bias else 0)
    full = distillation_loss(s_logits, t_hidden @ t_weight.t(), targets, 2.0, 0.7, name, 0.3, teacher_top_k)
    full_grads = torch.autograd.grad(full.sum(), student)

    out = chunked_distillation_loss(s_hidden, s_weight, t_hidden, t_weight, targets, 0.7, name, 0.3, 2.0, teacher_top_k,
                                    student_bias=s_bias, chunk_size=chunk_size)
    torch.testing.assert_close(0.7 * out.divergence - 0.3 * out.logps, full, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.loss_sum, full.sum(), atol=1e-12, rtol=0)
    # gradients flow into the student only: the teacher's tensors are constants, even when they require grad
    grads = torch.autograd.grad(3.0 * out.loss_sum, student + [t_hidden, t_weight], allow_unused=True)
    for got, want in zip(grads, full_grads):
        torch.testing.assert_close(got, 3.0 * want, atol=1e-12, rtol=0)
    assert grads[-2:] == (None, None)
    with torch.no_grad():  # evaluation: the same values, no gradient work
        torch.testing.assert_close(chunked_distillation_loss(
            s_hidden, s_weight, t_hidden, t_weight, targets, 0.7, name, 0.3, 2.0, teacher_top_k, student_bias=s_bias,
            chunk_size=chunk_size).loss_sum, full.sum(), atol=1e-12, rtol=0)


def test_a_frozen_student_head_gets_no_gradient_and_the_hidden_states_the_right_one():
    """As under LoRA: the head is frozen, only the hidden states (the adapters below them) need a gradient."""
    s_hidden, s_weight, _, t_hidden, t_weight, targets = _inputs(seed=4)
    frozen = s_weight.detach()
    full = distillation_loss(s_hidden @ frozen.t(), t_hidden @ t_weight.t(), targets, 1.5, 0.5, "tv").sum()
    (expected,) = torch.autograd.grad(full, [s_hidden])
    out = chunked_distillation_loss(s_hidden, frozen, t_hidden, t_weight, targets, 0.5, "tv", temperature=1.5,
                                    chunk_size=3)
    (got,) = torch.autograd.grad(out.loss_sum, [s_hidden])
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert frozen.grad is None


def test_chunked_accumulates_the_weight_gradient_in_place():
    s_hidden, s_weight, _, t_hidden, t_weight, targets = _inputs(seed=3)
    chunked_distillation_loss(s_hidden, s_weight, t_hidden, t_weight, targets, 0.5, "reverse_kl",
                              chunk_size=4).loss_sum.backward()
    expected = s_weight.grad.clone()
    s_weight.grad = None
    chunked_distillation_loss(s_hidden, s_weight, t_hidden, t_weight, targets, 0.5, "reverse_kl", chunk_size=4,
                              accumulate_grad_in_place=True).loss_sum.backward()
    torch.testing.assert_close(s_weight.grad, expected, atol=1e-12, rtol=0)


class _TensorCensus(TorchDispatchMode):
    """Every tensor an operation creates (forward and backward), weakly: deterministic, unlike allocator counters."""

    def __init__(self):
        super().__init__()
        self.largest, self.created = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.untyped_storage().nbytes())
                self.created.append(weakref.ref(value))
        return out

    def live_bytes(self) -> int:
        gc.collect()
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in map(_alive, self.created) if t
                    is not None}
        return sum(storages.values())


def _alive(ref):
    return ref()


def _measure(loss_fn):
    """(largest temporary of forward + backward, bytes created by forward and still held when it returns)."""
    with _TensorCensus() as forward:
        loss = loss_fn()
    held = forward.live_bytes()
    with _TensorCensus() as backward:
        loss.backward()
    return max(forward.largest, backward.largest), held


def test_chunked_loss_never_holds_batch_by_vocab_tensors():
    torch.manual_seed(0)
    n, h, v, chunk = 256, 16, 2048, 32
    s_hidden, s_weight = torch.randn(n, h, requires_grad=True), torch.randn(v, h, requires_grad=True)
    t_hidden, t_weight, targets = torch.randn(n, h), torch.randn(v, h), torch.randint(0, v, (n,))

    def naive():
        return distillation_loss(s_hidden @ s_weight.t(), t_hidden @ t_weight.t(), targets, 2.0, 0.5, "jsd").sum()

    def chunked():
        return chunked_distillation_loss(s_hidden, s_weight, t_hidden, t_weight, targets, 0.5, "jsd",
                                         temperature=2.0, chunk_size=chunk).loss_sum

    naive_largest, naive_held = _measure(naive)
    chunked_largest, chunked_held = _measure(chunked)
    row_bytes = v * 4  # one fp32 row of logits
    assert naive_largest >= n * row_bytes  # the full (N, V) logits
    assert chunked_largest <= max(chunk * row_bytes, v * h * 4)  # one chunk of logits, or the (V, H) weight gradient
    assert naive_held >= 2 * n * row_bytes  # autograd keeps several (N, V) tensors for backward
    # the (N, H) and (V, H) gradients and (N,) metrics, nothing vocabulary-by-position
    assert chunked_held <= (n * h + v * h + 4 * n) * 4 < n * row_bytes / 4


def test_chunked_refuses_mismatched_vocabularies():
    s_hidden, s_weight, _, t_hidden, _, targets = _inputs()
    with pytest.raises(ValueError, match="vocabulary"):
        chunked_distillation_loss(s_hidden, s_weight, t_hidden, torch.randn(18, 5, dtype=torch.float64), targets)
