"""Classification and regression metrics on tensors (N examples, K classes).

    accuracy        = (1/N) sum_i [y_hat_i = y_i]
    confusion C     : C[t, p] = #{i : y_i = t, y_hat_i = p}   (rows: true class, columns: predicted)
    precision_k     = C[k, k] / sum_t C[t, k],  recall_k = C[k, k] / sum_p C[k, p]   (0 where the sum is 0)
    F1_k            = 2 P_k R_k / (P_k + R_k);  macro-F1 = (1/K) sum_k F1_k
    ECE             = sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|   over equal-width confidence bins
                      (Naeini et al. 2015; Guo et al. 2017 "On calibration of modern neural networks")
    MSE, MAE        = mean (y_hat - y)^2, mean |y_hat - y|
    Pearson r       = cov(y_hat, y) / (std(y_hat) std(y));  Spearman rho = Pearson r of the ranks (ties: mean rank)
"""

from __future__ import annotations

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).double().mean()) if labels.numel() else 0.0


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` counts, rows the true class, columns the predicted one."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def precision_recall_f1(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class ``(K,)`` precision, recall and F1 from a confusion matrix (0 where undefined)."""
    confusion = confusion.double()
    true_positives = confusion.diagonal()
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, true_positives / actual.clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    return precision, recall, f1


def macro_f1(confusion: torch.Tensor) -> float:
    return float(precision_recall_f1(confusion)[2].mean())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of the top-class confidence of ``(N, K)`` probabilities; bins (b/n, (b+1)/n], the first includes 0."""
    confidence, predictions = probs.max(-1)
    correct = (predictions == labels).double()
    bins = (confidence.double() * n_bins).ceil().clamp(1, n_bins).long() - 1  # (N,)
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            ece += float(members.double().mean() * (correct[members].mean() - confidence[members].double().mean()).abs())
    return ece


def regression_metrics(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """MSE, MAE, Pearson and Spearman correlation of ``(N,)`` predictions (correlations 0 when a side is constant)."""
    predictions, targets = predictions.double(), targets.double()
    residual = predictions - targets
    return {"mse": float(residual.square().mean()), "mae": float(residual.abs().mean()),
            "pearson": pearson(predictions, targets), "spearman": pearson(ranks(predictions), ranks(targets))}


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (x.square().sum() * y.square().sum()).sqrt()
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks ``(N,)``; tied values share their mean rank."""
    order = values.argsort()
    positions = torch.empty_like(order, dtype=torch.double)
    positions[order] = torch.arange(1, len(values) + 1, dtype=torch.double)
    unique, inverse = values.unique(return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.double).index_add_(0, inverse, positions)
    counts = torch.zeros(len(unique), dtype=torch.double).index_add_(0, inverse, torch.ones_like(positions))
    return (sums / counts)[inverse]
