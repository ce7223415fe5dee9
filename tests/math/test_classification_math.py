"""Pooling, classification/regression/multi-label losses and the metrics, against values worked out by hand."""

import math

import pytest
import torch

from posttrain.math.classification import (
    classification_loss,
    multi_label_loss,
    pool_hidden_states,
    regression_loss,
)
from posttrain.math.classification_metrics import (
    accuracy,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    pearson,
    precision_recall_f1,
    ranks,
    regression_metrics,
)


def test_pooling_reads_only_real_tokens():
    hidden = torch.tensor([[[1.0, 5.0], [3.0, -1.0], [100.0, 100.0]],  # row 0: 2 real tokens, then a pad
                           [[-7.0, 7.0], [2.0, 2.0], [4.0, 0.0]]])  # row 1: left-padded, 2 real tokens
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert pool_hidden_states(hidden, mask, "mean").tolist() == [[2.0, 2.0], [3.0, 1.0]]
    assert pool_hidden_states(hidden, mask, "max").tolist() == [[3.0, 5.0], [4.0, 2.0]]
    assert pool_hidden_states(hidden, mask, "last").tolist() == [[3.0, -1.0], [4.0, 0.0]]
    assert pool_hidden_states(hidden, mask, "first").tolist() == [[1.0, 5.0], [2.0, 2.0]]
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_hidden_states(hidden, mask, "cls")


def test_cross_entropy_with_class_weights_and_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    z0 = math.log(math.exp(2) + 2)
    z1 = math.log(1 + math.e + math.exp(3))
    logp0 = [2 - z0, -z0, -z0]
    logp1 = [-z1, 1 - z1, 3 - z1]
    assert classification_loss(logits, labels).tolist() == pytest.approx([-logp0[0], -logp1[1]], rel=1e-6)
    eps = 0.3
    smoothed = [(1 - eps) * -logp0[0] - eps * sum(logp0) / 3, (1 - eps) * -logp1[1] - eps * sum(logp1) / 3]
    assert classification_loss(logits, labels, label_smoothing=eps).tolist() == pytest.approx(smoothed, rel=1e-6)
    # torch's mean reduction agrees with the per-example values (unweighted)
    assert float(classification_loss(logits, labels, label_smoothing=eps).mean()) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps)), rel=1e-6)
    weights = torch.tensor([0.5, 2.0, 1.0])
    assert classification_loss(logits, labels, weights).tolist() == pytest.approx([-0.5 * logp0[0], -2.0 * logp1[1]],
                                                                                  rel=1e-6)


def test_regression_losses():
    predictions, targets = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.5, 3.0, -2.0])
    assert regression_loss(predictions, targets, "mse").tolist() == [0.25, 9.0, 0.0]
    # Huber, delta 1: 0.5 r^2 for |r| <= 1, else |r| - 0.5
    assert regression_loss(predictions, targets, "huber").tolist() == [0.125, 2.5, 0.0]
    assert regression_loss(predictions, targets, "huber", huber_delta=2.0).tolist() == [0.125, 4.0, 0.0]


def test_multi_label_loss():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    def softplus(x):
        return math.log(1 + math.exp(x))

    # -log sigma(z) = softplus(-z), -log(1 - sigma(z)) = softplus(z)
    expected = [softplus(-0.0) + softplus(2.0), softplus(-1.0) + softplus(-1.0)]
    assert multi_label_loss(logits, targets).tolist() == pytest.approx(expected, rel=1e-6)


def test_confusion_precision_recall_f1():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    confusion = confusion_matrix(predictions, labels, 3)
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    precision, recall, f1 = precision_recall_f1(confusion)
    assert precision.tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert recall.tolist() == pytest.approx([2 / 3, 0.5, 1.0])
    assert f1.tolist() == pytest.approx([0.8, 0.5, 2 / 3])
    assert macro_f1(confusion) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    # a class never predicted nor present: 0, not NaN
    assert precision_recall_f1(confusion_matrix(predictions, labels, 4))[2].tolist()[3] == 0.0


def test_expected_calibration_error():
    # confidences 0.85 (right), 0.75 (wrong), 0.58 (right), 0.55 (right); 10 bins:
    # bin (0.8, 0.9]: |1 - 0.85|; bin (0.7, 0.8]: |0 - 0.75|; bin (0.5, 0.6]: {0.58, 0.55}: |1 - 0.565|
    probs = torch.tensor([[0.85, 0.15], [0.25, 0.75], [0.58, 0.42], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 0, 1])
    expected = 0.25 * 0.15 + 0.25 * 0.75 + 0.5 * 0.435
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_regression_metrics():
    predictions, targets = torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([1.0, 3.0, 3.0, 4.0])
    metrics = regression_metrics(predictions, targets)
    assert metrics["mse"] == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert metrics["mae"] == pytest.approx(0.5)
    # Pearson by hand: x - mean = [-1.75, -0.75, 0.25, 2.25], y - mean = [-1.75, 0.25, 0.25, 1.25]
    dx, dy = [-1.75, -0.75, 0.25, 2.25], [-1.75, 0.25, 0.25, 1.25]
    r = sum(a * b for a, b in zip(dx, dy)) / math.sqrt(sum(a * a for a in dx) * sum(b * b for b in dy))
    assert metrics["pearson"] == pytest.approx(r)
    # ranks with ties: y = [1, 3, 3, 4] -> [1, 2.5, 2.5, 4]
    assert ranks(targets).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert metrics["spearman"] == pytest.approx(pearson(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1, 2.5, 2.5, 4])))
    assert pearson(torch.ones(3), torch.tensor([1.0, 2, 3])) == 0.0
