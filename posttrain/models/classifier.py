"""Sequence classifiers and regressors on any causal LM: decoder -> pooling -> (dropout, hidden layer) -> linear head.

The trained part is a plain transformers ``*ForSequenceClassification`` (its decoder is the causal LM's, its ``score``
head ``(K, H)`` is new) wrapped with what transformers' class does not have: the pooling (``mean``, ``last``,
``first``, ``max``: posttrain.math.classification) and an optional hidden layer ``tanh(W h + b)`` before the score
head (BERT's pooler, Devlin et al. 2019). A saved classifier is a folder with

    model.safetensors + config.json   the *ForSequenceClassification (or adapter_model.safetensors under LoRA)
    classifier.json                   pooling, labels (id -> name), problem type, head shape, base model
    head.safetensors                  the hidden layer, when there is one
    tokenizer files                   padding with a token no text ends with (distinct_pad_token)

With ``last`` pooling and no hidden layer it is exactly what ``AutoModelForSequenceClassification.from_pretrained``
computes (transformers scores the last non-pad token); with another pooling, load it with
``posttrain.models.classifier.load_classifier(folder)``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from posttrain.errors import ModelLoadError
from posttrain.io import atomic_dir
from posttrain.math.classification import pool_hidden_states
from posttrain.models.forward import causal_lm, hidden_states
from posttrain.models.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from posttrain.models.lora import LoraSettings, is_peft_model
from posttrain.models.reward_model import distinct_pad_token, from_causal_lm

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"


@dataclass
class ClassifierSpec:
    """What a classifier is, beyond its weights: saved as classifier.json."""

    num_labels: int  # outputs of the score head: classes, labels (multi-label), 1 (regression)
    problem_type: str  # single_label_classification, multi_label_classification or regression
    pooling: str = "mean"
    hidden_layer: bool = False
    dropout: float = 0.0
    labels: list[str] = field(default_factory=list)  # id -> name (classification); empty for regression
    base_model: str = ""


class SequenceClassifier(torch.nn.Module):
    """``forward(batch) -> (B, num_labels)`` float32 logits (or predictions, for regression)."""

    def __init__(self, model, spec: ClassifierSpec):
        super().__init__()
        self.model = model  # *ForSequenceClassification, or a peft model around one
        self.spec = spec
        hidden_size = causal_lm(model).config.hidden_size
        self.dropout = torch.nn.Dropout(spec.dropout)
        self.hidden = torch.nn.Linear(hidden_size, hidden_size) if spec.hidden_layer else None
        if self.hidden is not None:
            self.hidden.to(dtype=causal_lm(model).score.weight.dtype, device=causal_lm(model).score.weight.device)

    @property
    def config(self):
        return causal_lm(self.model).config

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that are new (score head, hidden layer): trained under LoRA and head-only alike."""
        params = list(causal_lm(self.model).score.parameters())
        return params + (list(self.hidden.parameters()) if self.hidden is not None else [])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = pool_hidden_states(hidden_states(self.model, batch), batch["attention_mask"], self.spec.pooling)
        pooled = self.dropout(pooled)
        if self.hidden is not None:
            pooled = self.dropout(torch.tanh(self.hidden(pooled)))
        return causal_lm(self.model).score(pooled).float()  # (B, K)


def build_classifier(spec: ClassifierSpec, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                     seed: int = 0, lora: LoraSettings | None = None, gradient_checkpointing: bool = False):
    """``(SequenceClassifier, tokenizer)``: the causal LM ``spec.base_model`` (any spec load_model takes; a causal
    LM's LoRA folder is merged first) with a new head, LoRA adapters on the decoder when ``lora.enabled``."""
    lm, tokenizer = load_model(spec.base_model, "float32", "cpu", trust_remote_code=trust_remote_code)
    if is_peft_model(lm):
        lm = lm.merge_and_unload()
    tokenizer = distinct_pad_token(tokenizer)
    model = from_causal_lm(lm, tokenizer, seed, spec.num_labels)
    _set_label_config(model.config, spec)
    torch_device = resolve_device(device)
    model = model.to(dtype=resolve_dtype(dtype, torch_device), device=torch_device)
    if lora is not None and lora.enabled:
        model = _apply_classifier_lora(model, lora, gradient_checkpointing)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = SequenceClassifier(model, spec)
    return classifier, tokenizer


def _apply_classifier_lora(model, settings: LoraSettings, gradient_checkpointing: bool):
    from posttrain.models.reward_model import apply_reward_lora

    return apply_reward_lora(model, settings, gradient_checkpointing)  # the score head trains in full


def _set_label_config(config, spec: ClassifierSpec) -> None:
    """id2label / problem_type in the transformers config, so plain transformers reads the labels and the loss."""
    config.problem_type = spec.problem_type
    if spec.labels:
        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {name: i for i, name in enumerate(spec.labels)}


def save_classifier(classifier: SequenceClassifier, tokenizer, directory: str | Path) -> Path:
    """Write the folder described at the top of this module, atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model = classifier.model
        if is_peft_model(model):
            for adapter_config in model.peft_config.values():
                adapter_config.base_model_name_or_path = classifier.spec.base_model
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if classifier.hidden is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in classifier.hidden.state_dict().items()},
                      tmp / HEAD_FILE)
        (tmp / CLASSIFIER_FILE).write_text(json.dumps(asdict(classifier.spec), indent=2) + "\n")
    return directory


def load_classifier(directory: str | Path, dtype: str = "auto", device: str = "auto"):
    """``(SequenceClassifier, tokenizer)`` from a folder ``save_classifier`` wrote."""
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    if not (directory / CLASSIFIER_FILE).is_file():
        raise ModelLoadError(f"{directory} is not a posttrain classifier: it has no {CLASSIFIER_FILE} (train one with "
                             "method: classify)")
    spec = ClassifierSpec(**json.loads((directory / CLASSIFIER_FILE).read_text()))
    torch_device = resolve_device(device)
    if (directory / "adapter_config.json").is_file():
        from peft import PeftModel

        classifier, _ = build_classifier(spec, dtype, device)
        model = PeftModel.from_pretrained(classifier.model, str(directory))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(directory), dtype=resolve_dtype(dtype, torch_device))
    classifier = SequenceClassifier(model.to(torch_device), spec)
    if classifier.hidden is not None:
        classifier.hidden.load_state_dict(load_file(directory / HEAD_FILE))
    classifier.eval()
    return classifier, load_tokenizer(str(directory))


__all__ = ["CLASSIFIER_FILE", "HEAD_FILE", "ClassifierSpec", "SequenceClassifier", "build_classifier",
           "load_classifier", "save_classifier"]
