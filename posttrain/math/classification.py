"""Sequence classification and regression on a decoder: pooling the hidden states, and the per-example losses.

Pooling turns ``(B, T, H)`` hidden states into one ``(B, H)`` vector per row, from the positions with
``attention_mask = 1`` only, so a padded row pools what it pools alone (left or right padding):
    mean:  sum_t m_t h_t / sum_t m_t              (Sentence-BERT, Reimers & Gurevych 2019)
    last:  h at the rightmost real token          (GPT-style sequence classification, Radford et al. 2018)
    first: h at the leftmost real token
    max:   max_t over real tokens, per dimension  (Conneau et al. 2017, InferSent)

Losses, one value per example ``(B,)`` (the engine sums them and divides by the step's example count):
    classification_loss: cross-entropy with class weights w and label smoothing eps (Szegedy et al. 2016):
        l_i = - w_{y_i} [ (1 - eps) log p_{i, y_i} + (eps / K) sum_k log p_{i, k} ]
    regression_loss: MSE (y_hat - y)^2, or Huber with delta d: (1/2) r^2 if |r| <= d else d (|r| - d / 2)
    multi_label_loss: binary cross-entropy summed over the K labels (each label its own sigmoid):
        l_i = - sum_k [ y_ik log sigma(z_ik) + (1 - y_ik) log(1 - sigma(z_ik)) ]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLINGS = ("mean", "last", "first", "max")


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(B, T, H)`` hidden states and ``(B, T)`` mask -> ``(B, H)``, one vector per row from its real tokens."""
    mask = attention_mask.to(torch.bool)
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    if pooling == "last":
        index = torch.where(mask, positions, -1).max(1).values  # (B,) rightmost real token
    elif pooling == "first":
        index = torch.where(mask, positions, mask.shape[1]).min(1).values  # (B,) leftmost real token
    else:
        raise ValueError(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy per example ``(B,)`` from ``(B, K)`` logits and ``(B,)`` integer labels; ``class_weights``
    ``(K,)`` scales each example's loss by the weight of its true class (unnormalised, unlike torch's weighted mean,
    so that the engine's sum / count keeps accumulation exact)."""
    logps = torch.log_softmax(logits.float(), dim=-1)  # (B, K)
    nll = -logps.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B,)
    loss = (1 - label_smoothing) * nll - label_smoothing * logps.mean(-1) if label_smoothing else nll
    return loss * class_weights.to(loss.dtype)[labels] if class_weights is not None else loss


def regression_loss(predictions: torch.Tensor, targets: torch.Tensor, kind: str = "mse",
                    huber_delta: float = 1.0) -> torch.Tensor:
    """Per-example ``(B,)`` squared error (``mse``) or Huber loss (``huber``, Huber 1964) of ``(B,)`` predictions."""
    residual = predictions.float() - targets.float()
    if kind == "mse":
        return residual.square()
    if kind == "huber":
        return F.huber_loss(predictions.float(), targets.float(), reduction="none", delta=huber_delta)
    raise ValueError(f"unknown regression loss {kind!r}: expected mse or huber")


def multi_label_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy summed over labels, per example ``(B,)``, from ``(B, K)`` logits and 0/1 targets;
    ``pos_weight`` ``(K,)`` scales the positive term of each label."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none",
                                              pos_weight=pos_weight).sum(-1)
