"""Sequence classification and regression: a causal LM's decoder (or an encoder, BERT-like), a pooling of its hidden
states and a linear head, trained on labelled text (the LoopOS guide's first method; Howard & Ruder 2018, Radford et
al. 2018).

    z_i = W pool(h_theta(x_i)) (+ hidden layer)        (B, K) logits, posttrain.models.classifier
    single label (K >= 2): L = (1/B) sum_i CE(z_i, y_i)   (class weights, label smoothing)
    regression (K = 1):    L = (1/B) sum_i (z_i - y_i)^2  or Huber
    multi-label:           L = (1/B) sum_i sum_k BCE(z_ik, y_ik)          (posttrain.math.classification)

Algorithm:
    1. the causal LM with a new score head (+ LoRA adapters, or everything but the head frozen with head_only)
    2. for each optimizer step: the loss over the step batch, backward, AdamW      (posttrain.engine)
    3. evaluate on the held-out set at step 0 and every eval_steps: loss, accuracy, macro-F1, ECE (or MSE, MAE,
       Pearson, Spearman for regression)
    4. save final/ (loads back with ``posttrain predict``; with last pooling and no hidden layer, with plain
       ``AutoModelForSequenceClassification``) and evaluation.json (+ per-class precision/recall, confusion matrix)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data.classification import (
    LabelColumns,
    collate_labeled,
    encode_label,
    infer_labels,
    infer_num_labels,
    read_labeled_rows,
    tokenize_labeled,
)
from posttrain.engine import LossOutput, Method
from posttrain.engine.checkpoint import load_model_weights
from posttrain.errors import ConfigError
from posttrain.io import atomic_write_text
from posttrain.math.classification import classification_loss, multi_label_loss, regression_loss
from posttrain.math.classification_metrics import (
    accuracy,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    precision_recall_f1,
    regression_metrics,
)
from posttrain.models.classifier import (
    ClassifierSpec,
    SequenceClassifier,
    build_classifier,
    load_classifier,
    load_head_files,
    save_classifier,
)
from posttrain.trainers.common import (
    PolicyTrainingConfig,
    TrainingRun,
    apply_freeze,
    evaluation_summary,
    log_trainable,
    train_and_save,
    write_evaluation,
)

log = logging.getLogger(__name__)


@dataclass
class ClassifyConfig(PolicyTrainingConfig):
    method: Literal["classify"] = option("classify", help="sequence classification or regression: pooling + a linear "
                                                          "head on the model's decoder (docs/classification.md)")
    learning_rate: float = option(5e-5, min=0, help="AdamW's peak learning rate, reached after warmup_steps")
    num_labels: int | None = option(None, min=1, help="outputs of the head: classes (>= 2), 1 for regression, or the "
                                                      "labels of a multi-label task; None: from the training labels")
    multi_label: bool = option(False, help="each text has any number of labels (a list): binary cross-entropy per "
                                           "label")
    labels: list[str] | None = option(None, help="class names in id order; None: the training set's distinct string "
                                                 "labels, sorted (saved with the model either way)")
    pooling: Literal["mean", "last", "first", "max"] = option(
        "mean", help="how the hidden states become one vector: mean over real tokens, the last token (loads as plain "
                     "AutoModelForSequenceClassification), the first, or the per-dimension max")
    head_hidden_layer: bool = option(False, help="a hidden layer tanh(W h + b) of the model's width before the head")
    head_dropout: float = option(0.0, min=0, max=1, help="dropout on the pooled vector (and the hidden layer's output)")
    head_only: bool = option(False, help="train only the head (and hidden layer): the decoder is frozen")
    class_weights: list[float] | None = option(None, help="cross-entropy weight of each class, in id order (e.g. "
                                                          "inverse frequencies); None: all 1")
    label_smoothing: float = option(0.0, min=0, max=1, help="cross-entropy label smoothing eps (Szegedy et al. 2016)")
    regression_loss: Literal["mse", "huber"] = option("mse", help="regression (num_labels 1): squared error or Huber")
    huber_delta: float = option(1.0, min=0, help="Huber's delta: quadratic below it, linear above")
    text_pair_column: str = option("text_pair", help="the column with a second text (pair classification), used when "
                                                     "present; joined to the text by a newline")


def problem_type(config: ClassifyConfig, num_labels: int) -> str:
    if config.multi_label:
        return "multi_label_classification"
    return "regression" if num_labels == 1 else "single_label_classification"


class ClassifyMethod(Method):
    """The per-example loss summed over the batch, normalised by the step's example count; its own evaluation."""

    # tested under distributed.strategy: fsdp (tests/distributed): the classifier's own forward is the root's, so FSDP
    # gathers the embedding and the score head around it; the evaluation runs the same batches on every rank
    fsdp = True

    def __init__(self, config: ClassifyConfig, spec: ClassifierSpec, eval_examples: list, pad_token_id: int):
        self.config, self.spec = config, spec
        self.eval_examples, self.pad_token_id = eval_examples, pad_token_id
        self.collate = collate_labeled
        self.class_weights = torch.tensor(config.class_weights) if config.class_weights else None

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["labels"].shape[0]

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        outputs = model(batch)  # (B, K)
        losses = self.losses(outputs, batch["labels"])
        metrics = {}
        if self.spec.problem_type == "single_label_classification":
            metrics["accuracy"] = float((outputs.argmax(-1) == batch["labels"]).sum())
        return LossOutput(losses.sum(), metrics)

    def losses(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.spec.problem_type == "regression":
            return regression_loss(outputs.squeeze(-1), labels, self.config.regression_loss, self.config.huber_delta)
        if self.spec.problem_type == "multi_label_classification":
            return multi_label_loss(outputs, labels)
        weights = self.class_weights.to(outputs.device) if self.class_weights is not None else None
        return classification_loss(outputs, labels, weights, self.config.label_smoothing)

    def evaluate(self, model, step: int) -> dict[str, float]:
        outputs, labels = predict_examples(model, self.eval_examples, self.pad_token_id, self.config.eval_batch_size)
        scalars, _ = classification_metrics(outputs, labels, self.spec)
        loss = float(self.losses(outputs, labels).mean())
        return {"eval_loss": loss, "eval_items": len(labels), **{f"eval_{k}": v for k, v in scalars.items()}}


@torch.no_grad()
def predict_examples(model: SequenceClassifier, examples: list, pad_token_id: int, batch_size: int = 16):
    """``(outputs (N, K) float32, labels)`` of ``examples`` in their order, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs, labels = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate_labeled(examples[start : start + batch_size], pad_token_id)
        outputs.append(model({k: v.to(device) for k, v in batch.items()}).cpu())
        labels.append(batch["labels"])
    model.train(was_training)
    return torch.cat(outputs), torch.cat(labels)


def classification_metrics(outputs: torch.Tensor, labels: torch.Tensor, spec: ClassifierSpec) -> tuple[dict, dict]:
    """``(scalars, details)``: the figures logged at each evaluation, and per-class figures for evaluation.json."""
    if spec.problem_type == "regression":
        return regression_metrics(outputs.squeeze(-1), labels), {}
    if spec.problem_type == "multi_label_classification":
        predictions = (outputs > 0).long()
        per_label = [precision_recall_f1(confusion_matrix(predictions[:, k], labels[:, k].long(), 2))
                     for k in range(spec.num_labels)]
        f1s = [float(f1[1]) for _, _, f1 in per_label]
        return ({"label_accuracy": accuracy(predictions, labels.long()),
                 "exact_match": float((predictions == labels.long()).all(-1).float().mean()),
                 "macro_f1": sum(f1s) / len(f1s)},
                {"per_label": {name: {"precision": float(p[1]), "recall": float(r[1]), "f1": float(f[1])}
                               for name, (p, r, f) in zip(label_names(spec), per_label)}})
    predictions = outputs.argmax(-1)
    confusion = confusion_matrix(predictions, labels, spec.num_labels)
    precision, recall, f1 = precision_recall_f1(confusion)
    scalars = {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(confusion),
               "ece": expected_calibration_error(outputs.softmax(-1), labels)}
    details = {"labels": label_names(spec), "confusion_matrix": confusion.tolist(),
               "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]),
                                    "f1": float(f1[k]), "support": int(confusion[k].sum())}
                             for k, name in enumerate(label_names(spec))}}
    return scalars, details


def label_names(spec: ClassifierSpec) -> list[str]:
    return spec.labels or [str(k) for k in range(spec.num_labels)]


@dataclass
class ClassifierFiles:
    """Checkpoints and final/ as save_classifier writes them."""

    classifier: SequenceClassifier
    tokenizer: object

    def save(self, directory: Path, save_merged: bool = False) -> None:
        save_classifier(self.classifier, self.tokenizer, directory)

    def load(self, directory: Path) -> None:
        load_model_weights(self.classifier.model, directory)
        load_head_files(self.classifier, directory)


def train_classify(config: ClassifyConfig, callbacks=None) -> dict:
    """Train a classifier or regressor end to end; returns the evaluation dict (also output_dir/evaluation.json)."""
    if config.head_only and config.lora.enabled:
        raise ConfigError("head_only and lora.enabled exclude each other: head_only trains the head alone, LoRA trains "
                          "adapters and the head")
    if config.quantization != "none" or config.eval_suite is not None or config.lora.save_merged:
        raise ConfigError("classify supports neither quantization, eval_suite nor lora.save_merged: its evaluation is "
                          "evaluation.json")
    data, columns = config.data, label_columns(config)
    if not data.path:
        raise ConfigError("data.path is required: rows with a text and a label column")
    train_rows = read_labeled_rows(data.path, data.split, columns)
    eval_source = data.eval_path or (data.path if data.eval_split else None)
    eval_rows = read_labeled_rows(eval_source, data.eval_split, columns) if eval_source else []
    labels = list(config.labels) if config.labels else infer_labels(train_rows, columns.label,
                                                                      "regression" if config.num_labels == 1 else "")
    num_labels = config.num_labels or infer_num_labels(train_rows, columns.label, labels)
    if labels and len(labels) != num_labels:
        raise ConfigError(f"num_labels is {num_labels} but there are {len(labels)} labels: {', '.join(labels)}")
    if config.class_weights and len(config.class_weights) != num_labels:
        raise ConfigError(f"class_weights has {len(config.class_weights)} weights for {num_labels} classes")
    spec = ClassifierSpec(num_labels, problem_type(config, num_labels), config.pooling, config.head_hidden_layer,
                          config.head_dropout, labels, config.model)
    for row in train_rows + eval_rows:  # a bad label fails before any model loads
        encode_label(row.values[columns.label], row.where, spec.problem_type, num_labels, labels)
    dtype = "float32" if config.dtype == "auto" and not config.lora.enabled else config.dtype
    model, tokenizer = build_classifier(spec, dtype, config.device, config.trust_remote_code, config.seed, config.lora,
                                        config.gradient_checkpointing)
    if config.head_only:
        head = {id(p) for p in model.head_parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in head)
    apply_freeze(model.model, config.freeze)
    log_trainable(model, f"classifier ({spec.problem_type}, {num_labels} outputs) on {config.model}")

    def tokenized(rows):
        return tokenize_labeled(rows, tokenizer, columns, data.max_length, spec.problem_type, num_labels, labels)

    train_examples, eval_examples = tokenized(train_rows), tokenized(eval_rows)
    method = ClassifyMethod(config, spec, eval_examples, tokenizer.pad_token_id)
    run = train_and_save(config, model, tokenizer, method, train_examples, eval_examples, callbacks,
                         files=ClassifierFiles(model, tokenizer))
    return write_evaluation(config, classify_evaluation(config, model, run, method))


def label_columns(config: ClassifyConfig) -> LabelColumns:
    return LabelColumns(config.data.text_column, config.data.label_column, config.text_pair_column)


def classify_evaluation(config: ClassifyConfig, model, run: TrainingRun, method: ClassifyMethod) -> dict:
    """evaluation.json: the last evaluation's figures beside the step-0 baseline, and the final model's per-class
    precision/recall and confusion matrix on the held-out set."""
    def summary(record: dict) -> dict:
        return {k[len("eval_"):]: v for k, v in record.items() if k.startswith("eval_") and k != "eval_items"}

    result = evaluation_summary(config, model, run, summary, "n_examples")
    result["problem_type"], result["labels"] = method.spec.problem_type, label_names(method.spec)
    if method.eval_examples:
        outputs, labels = predict_examples(model, method.eval_examples, method.pad_token_id, config.eval_batch_size)
        result["details"] = classification_metrics(outputs, labels, method.spec)[1]
    return result


def predict_file(model_dir: str, input_path: str, output_path: str | None = None, batch_size: int = 16,
                 device: str = "auto") -> dict:
    """Predict every row of ``input_path`` (a text column, and text_pair when present) with a saved classifier;
    writes JSONL predictions to ``output_path`` (default: beside the input, ``*.predictions.jsonl``). Rows with
    labels also give the metrics, returned."""
    model, tokenizer = load_classifier(model_dir, device=device)
    spec = model.spec
    columns = LabelColumns()
    rows = read_labeled_rows(input_path, None, columns, need_label=False)
    with_labels = all(columns.label in row.values for row in rows)
    examples = tokenize_labeled(rows, tokenizer, columns, 1_000_000, spec.problem_type, spec.num_labels, spec.labels,
                                with_labels)
    outputs, labels = predict_examples(model, examples, tokenizer.pad_token_id, batch_size)
    names = label_names(spec)
    lines = []
    for row, output in zip(rows, outputs):
        if spec.problem_type == "regression":
            lines.append({"prediction": float(output[0])})
        elif spec.problem_type == "multi_label_classification":
            lines.append({"prediction": [names[k] for k in range(spec.num_labels) if output[k] > 0],
                          "probabilities": dict(zip(names, output.sigmoid().tolist()))})
        else:
            lines.append({"prediction": names[int(output.argmax())],
                          "probabilities": dict(zip(names, output.softmax(-1).tolist()))})
    output_path = output_path or str(Path(input_path).with_suffix("")) + ".predictions.jsonl"
    atomic_write_text(Path(output_path), "".join(json.dumps(line) + "\n" for line in lines))
    result = {"model": str(model_dir), "input": str(input_path), "output": output_path, "n_examples": len(rows)}
    if with_labels:
        result["metrics"] = classification_metrics(outputs, labels, spec)[0]
    return result
