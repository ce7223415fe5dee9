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

An encoder (BERT-like: its transformers model type has a masked-LM head and no decoder; ``is_encoder``) is loaded
with ``AutoModel`` instead, its own pooler dropped (the pooling above replaces it), and the score head is posttrain's
``(K, H)`` linear layer, saved as ``score.safetensors`` beside the encoder's weights (``classifier.json`` says
``encoder: true``); everything else (pooling, hidden layer, LoRA, head only, freezing) is the same.
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
from posttrain.models.reward_model import distinct_pad_token, from_causal_lm, init_score_head
from posttrain.models.specs import BUILTIN_SPECS

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"
SCORE_FILE = "score.safetensors"  # an encoder's score head (its AutoModel has none)


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
    encoder: bool = False  # the base is an encoder loaded with AutoModel; the score head is posttrain's


class SequenceClassifier(torch.nn.Module):
    """``forward(batch) -> (B, num_labels)`` float32 logits (or predictions, for regression)."""

    def __init__(self, model, spec: ClassifierSpec):
        super().__init__()
        self.model = model  # *ForSequenceClassification or an encoder (AutoModel), or a peft model around one
        self.spec = spec
        hidden_size = causal_lm(model).config.hidden_size
        weight = next(causal_lm(model).parameters()) if spec.encoder else causal_lm(model).score.weight
        self.dropout = torch.nn.Dropout(spec.dropout)
        self.hidden = torch.nn.Linear(hidden_size, hidden_size) if spec.hidden_layer else None
        self.score = torch.nn.Linear(hidden_size, spec.num_labels, bias=False) if spec.encoder else None
        for layer in (self.hidden, self.score):
            if layer is not None:
                layer.to(dtype=weight.dtype, device=weight.device)

    @property
    def config(self):
        return causal_lm(self.model).config

    @property
    def head(self) -> torch.nn.Linear:
        """The score head ``(K, H)``: the *ForSequenceClassification's ``score``, or an encoder's own."""
        return self.score if self.score is not None else causal_lm(self.model).score

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that are new (score head, hidden layer): trained under LoRA and head-only alike."""
        params = list(self.head.parameters())
        return params + (list(self.hidden.parameters()) if self.hidden is not None else [])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.spec.encoder:  # bidirectional: every token sees the whole text; pads are masked
            states = causal_lm(self.model)(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).last_hidden_state
        else:
            states = hidden_states(self.model, batch)
        pooled = self.dropout(pool_hidden_states(states, batch["attention_mask"], self.spec.pooling))
        if self.hidden is not None:
            pooled = self.dropout(torch.tanh(self.hidden(pooled)))
        return self.head(pooled).float()  # (B, K)


def build_classifier(spec: ClassifierSpec, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                     seed: int = 0, lora: LoraSettings | None = None, gradient_checkpointing: bool = False):
    """``(SequenceClassifier, tokenizer)``: the causal LM ``spec.base_model`` (any spec load_model takes; a causal
    LM's LoRA folder is merged first) with a new head, LoRA adapters on the decoder when ``lora.enabled``; or, when
    the base is an encoder (``is_encoder``), the encoder with posttrain's head."""
    spec.encoder = spec.encoder or is_encoder(spec.base_model, trust_remote_code)
    if spec.encoder:
        model, tokenizer = _load_encoder(spec.base_model, torch.float32, trust_remote_code)
    else:
        lm, tokenizer = load_model(spec.base_model, "float32", "cpu", trust_remote_code=trust_remote_code)
        if is_peft_model(lm):
            lm = lm.merge_and_unload()
        tokenizer = distinct_pad_token(tokenizer)
        model = from_causal_lm(lm, tokenizer, seed, spec.num_labels)
    _set_label_config(model.config, spec)
    torch_device = resolve_device(device)
    model = model.to(dtype=resolve_dtype(dtype, torch_device), device=torch_device)
    if lora is not None and lora.enabled:
        model = _apply_classifier_lora(model, lora, gradient_checkpointing, spec.encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = SequenceClassifier(model, spec)
    if classifier.score is not None:
        init_score_head(classifier.score, seed)
    return classifier, tokenizer


def is_encoder(spec: str, trust_remote_code: bool = False) -> bool:
    """Whether the model ``spec`` names is an encoder: a built-in name or a LoRA folder never is; otherwise its
    config's model type has a masked-LM class in transformers (BERT, RoBERTa, DeBERTa, ModernBERT, ...) and it is
    neither a decoder nor an encoder-decoder."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    path = Path(spec).expanduser()
    if spec in BUILTIN_SPECS or (path / "adapter_config.json").is_file():
        return False
    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # not a model transformers knows: load_model says why
        return False
    return (config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
            and not getattr(config, "is_encoder_decoder", False))


def _load_encoder(spec: str, dtype, trust_remote_code: bool = False):
    """``(encoder, tokenizer)``: ``AutoModel`` without its pooler (the classifier's pooling replaces it)."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(spec, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(f"encoder {spec!r} could not be loaded: {exc}") from None
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # BERT's pooler would hold weights that never get a gradient
    return model, distinct_pad_token(load_tokenizer(spec, trust_remote_code))


def _apply_classifier_lora(model, settings: LoraSettings, gradient_checkpointing: bool, encoder: bool = False):
    if encoder:  # the head is outside the encoder: it stays trainable in full
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                                target_modules=settings.target_modules))
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
        for layer, name in ((classifier.hidden, HEAD_FILE), (classifier.score, SCORE_FILE)):
            if layer is not None:
                save_file({k: v.detach().contiguous().cpu() for k, v in layer.state_dict().items()}, tmp / name)
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
    elif spec.encoder:
        model, _ = _load_encoder(str(directory), resolve_dtype(dtype, torch_device))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(directory), dtype=resolve_dtype(dtype, torch_device))
    classifier = SequenceClassifier(model.to(torch_device), spec)
    load_head_files(classifier, directory)
    classifier.eval()
    return classifier, load_tokenizer(str(directory))


def load_head_files(classifier: SequenceClassifier, directory: Path) -> None:
    """The layers kept beside the transformers model: the hidden layer, an encoder's score head."""
    for layer, name in ((classifier.hidden, HEAD_FILE), (classifier.score, SCORE_FILE)):
        if layer is not None:
            layer.load_state_dict(load_file(directory / name))


__all__ = ["CLASSIFIER_FILE", "HEAD_FILE", "SCORE_FILE", "ClassifierSpec", "SequenceClassifier", "build_classifier",
           "is_encoder", "load_classifier", "load_head_files", "save_classifier"]
