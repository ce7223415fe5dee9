"""Preference losses without RL: DPO and its variants, SimPO, ORPO, KTO. Pure functions of per-sequence log-probs.

Inputs are per-pair (or per-example) tensors of shape ``(B,)``:

    chosen_logps, rejected_logps          log pi_theta(y | x) summed over the completion's tokens
    ref_chosen_logps, ref_rejected_logps  the same under the frozen reference pi_ref
    chosen_lengths, rejected_lengths      completion token counts |y| (for length-normalised methods)

Every function returns per-example losses ``(B,)`` (the trainer sums them and the engine divides by the step's pair
count, so accumulation does not change the loss) plus the implicit rewards it logs. Notation: docs/notation.md.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PreferenceLoss(NamedTuple):
    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) detached implicit rewards
    rejected_rewards: torch.Tensor  # (B,)


# ------------------------------------------------------------------------------------------------------- DPO family
def dpo_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps) -> torch.Tensor:
    """h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)], the difference of log-ratios that every
    DPO variant scores. It is 0 when pi == pi_ref."""
    return (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)


def sigmoid_dpo_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, eq. 7):  L = -log sigma(beta h).

    At pi == pi_ref, h = 0 and L = ln 2; as beta -> 0 the loss tends to the constant ln 2 for any h.
    """
    return -F.logsigmoid(beta * margin)


def hinge_dpo_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinge loss on the scaled margin (SLiC-HF, Zhao et al. 2023, https://arxiv.org/abs/2305.10425):
    L = max(0, 1 - beta h)."""
    return torch.relu(1.0 - beta * margin)


def ipo_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """IPO (Azar et al. 2023, https://arxiv.org/abs/2310.12036, eq. 17):  L = (h - 1 / (2 beta))^2.

    Here ``beta`` is the paper's tau. The trainer passes log-ratios *averaged over completion tokens* (length-
    normalised), as TRL does: IPO regresses h onto the fixed target 1/(2 tau), while summed log-ratios grow with the
    completion's length, so without normalisation the same tau would mean a different target for every length.
    """
    return (margin - 1.0 / (2.0 * beta)) ** 2


def robust_dpo_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, https://arxiv.org/abs/2403.00409, eq. 8), for labels flipped with
    probability eps = ``label_smoothing`` < 0.5. Unbiased: its expectation under the noise equals the clean DPO loss.

        L = [ -(1 - eps) log sigma(beta h) + eps log sigma(-beta h) ] / (1 - 2 eps)
    """
    eps = label_smoothing
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing={eps}: robust DPO needs 0 <= eps < 0.5")
    return (-(1.0 - eps) * F.logsigmoid(beta * margin) + eps * F.logsigmoid(-beta * margin)) / (1.0 - 2.0 * eps)


def cdpo_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Conservative DPO (Mitchell 2023, https://ericmitchell.ai/cdpo.pdf): the binary cross-entropy against a label
    smoothed to 1 - eps, L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h). Its minimiser is a finite margin
    (sigma(beta h) = 1 - eps), so the implicit rewards stop growing once the pair is ranked with that confidence."""
    eps = label_smoothing
    return -(1.0 - eps) * F.logsigmoid(beta * margin) - eps * F.logsigmoid(-beta * margin)


DPO_LOSSES = {
    "sigmoid": sigmoid_dpo_loss,
    "hinge": hinge_dpo_loss,
    "ipo": ipo_loss,
    "robust": robust_dpo_loss,
    "cdpo": cdpo_loss,
}
LENGTH_NORMALISED_DPO = {"ipo"}  # loss types that score per-token average log-ratios


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> PreferenceLoss:
    """Per-pair DPO-family loss (``loss_type`` picks from DPO_LOSSES) and the implicit rewards
    r(x, y) = beta (log pi(y|x) - log pi_ref(y|x)) of chosen and rejected (Rafailov et al. 2023, sec. 5)."""
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {', '.join(DPO_LOSSES)}")
    margin = dpo_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = DPO_LOSSES[loss_type](margin, beta, label_smoothing)
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


def chosen_nll(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Per-pair mean token NLL of the chosen completion, -log pi(y_w) / |y_w|: the SFT term that RPO (Pang et al. 2024,
    https://arxiv.org/abs/2404.19733) adds to DPO with weight ``rpo_alpha`` and ORPO adds with weight 1."""
    return -chosen_logps / chosen_lengths


# ------------------------------------------------------------------------------------------- reference-free methods
def simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta: float,
               gamma: float) -> PreferenceLoss:
    """SimPO (Meng et al. 2024, https://arxiv.org/abs/2405.14734, eq. 6): reference-free, length-normalised,
    with a target margin gamma:

        r(x, y) = (beta / |y|) log pi(y | x)
        L       = -log sigma( r(x, y_w) - r(x, y_l) - gamma )
    """
    chosen_rewards = beta * chosen_logps / chosen_lengths
    rejected_rewards = beta * rejected_logps / rejected_lengths
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log odds(y) = log [P / (1 - P)] with P = exp(mean token log-prob), computed stably as
    mean_logp - log(1 - exp(mean_logp))."""
    return mean_logps - torch.log1p(-torch.exp(mean_logps).clamp(max=1.0 - 1e-6))


def orpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, lam: float) -> PreferenceLoss:
    """ORPO (Hong et al. 2024, https://arxiv.org/abs/2403.07691, eqs. 6-7): reference-free; SFT on the chosen
    completion plus lambda times a log-odds-ratio penalty, with P_theta(y|x) = exp(mean token log-prob):

        L_OR = -log sigma( log odds(y_w) - log odds(y_l) )
        L    = L_NLL(y_w) + lambda L_OR

    The logged rewards are lambda * log odds(y), the quantity the penalty ranks.
    """
    chosen_log_odds = log_odds(chosen_logps / chosen_lengths)
    rejected_log_odds = log_odds(rejected_logps / rejected_lengths)
    odds_ratio_loss = -F.logsigmoid(chosen_log_odds - rejected_log_odds)
    losses = chosen_nll(chosen_logps, chosen_lengths) + lam * odds_ratio_loss
    return PreferenceLoss(losses, lam * chosen_log_odds.detach(), lam * rejected_log_odds.detach())


# ---------------------------------------------------------------------------------------------------------- KTO
def kto_reference_point(mismatched_logps: torch.Tensor, ref_mismatched_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean_i [log pi(y_j|x_i) - log pi_ref(y_j|x_i)]): an estimate of
    KL(pi || pi_ref) from completions paired with *other* prompts in the batch (Ethayarajh et al. 2024, sec. 4.1).
    Detached: no gradient flows through it."""
    return (mismatched_logps - ref_mismatched_logps).mean().clamp(min=0).detach()


def kto_loss(logps, ref_logps, desirable: torch.Tensor, reference_point: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306, eq. 8) on unpaired examples:

        r(x, y) = log pi(y|x) - log pi_ref(y|x)
        v(x, y) = lambda_D sigma(beta (r - z0))   if y is desirable
                  lambda_U sigma(beta (z0 - r))   if y is undesirable
        L       = lambda_y - v(x, y)

    ``desirable`` is a bool ``(B,)``; ``reference_point`` is z0 from kto_reference_point. The returned
    chosen/rejected rewards are beta r for the desirable / undesirable examples (NaN where the example is the other
    kind, so callers average each over its own examples).
    """
    log_ratio = logps - ref_logps
    desirable_value = desirable_weight * torch.sigmoid(beta * (log_ratio - reference_point))
    undesirable_value = undesirable_weight * torch.sigmoid(beta * (reference_point - log_ratio))
    losses = torch.where(desirable, desirable_weight - desirable_value, undesirable_weight - undesirable_value)
    rewards = beta * log_ratio.detach()
    nan = torch.full_like(rewards, float("nan"))
    return PreferenceLoss(losses, torch.where(desirable, rewards, nan), torch.where(desirable, nan, rewards))


# ------------------------------------------------------------------------------------------------- reward models
def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair reward-model loss under the Bradley-Terry model (Bradley & Terry 1952), as in InstructGPT (Ouyang et
    al. 2022, https://arxiv.org/abs/2203.02155, eq. 1), with Llama 2's optional per-pair margin m (Touvron et al.
    2023, https://arxiv.org/abs/2307.09288, eq. 2):

        P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l))
        L                = -log sigma(r(x, y_w) - r(x, y_l) - m)

    ``chosen_rewards``, ``rejected_rewards``: scalar scores ``(B,)``; ``margin``: ``(B,)`` or None (m = 0). At equal
    scores and m = 0 the loss is ln 2. Returns the losses ``(B,)``.
    """
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference)


def reward_centering_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss that keeps reward-model scores centred on 0 (Eisenstein et al. 2023, "Helping or Herding?",
    https://arxiv.org/abs/2312.09244, sec. 3): the Bradley-Terry loss only sees differences, so it leaves the scores'
    mean free to drift; this pins it.

        penalty = (r(x, y_w) + r(x, y_l))^2        per pair, shape (B,)

    The trainer adds ``center_rewards_coefficient`` times it to the Bradley-Terry loss (TRL's default 1e-2).
    """
    return (chosen_rewards + rejected_rewards) ** 2


def reward_metric_sums(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Sums over pairs of the (implicit or learned) rewards of chosen and rejected, their margin, and accuracy (the
    share of pairs ranked right) as the trainers log them, divided by the pair count. A tie counts as half right, so
    a model that ranks nothing scores 0.5, chance."""
    margin = chosen_rewards - rejected_rewards
    accuracy = (margin > 0).float() + 0.5 * (margin == 0).float()
    return {
        "rewards/chosen": float(chosen_rewards.sum()),
        "rewards/rejected": float(rejected_rewards.sum()),
        "rewards/margin": float(margin.sum()),
        "rewards/accuracy": float(accuracy.sum()),
    }
