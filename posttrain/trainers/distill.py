"""Logit distillation: a student learns the teacher's next-token distributions on SFT data, plus the labels.

    L(theta) = (1/|C|) sum_{t in C} [ alpha T^2 D(p_t, q_theta,t) + (1 - alpha) (- log q_theta(y_t | y_<t)) ]

p_t = softmax(z^teacher_t / T), q_theta,t = softmax(z^student_t / T); D is forward KL (Hinton et al. 2015), reverse KL,
the generalized JSD of Agarwal et al. 2024 (GKD) or total variation (posttrain.math.distillation); C are the completion
tokens of the step batch, masked exactly as SFT masks them.

Algorithm:
    1. load the student (+ LoRA), or build it by pruning the teacher in memory (``student:``), and the teacher
       (frozen, eval mode, optionally bf16); refuse a teacher whose tokenizer differs from the student's (the
       divergence compares distributions token id by token id)
    2. tokenize the data with completion masks, as SFT; with ``teacher_cache``, the teacher's top-k bins of every
       completion token from the cache (computed once, trainers/teacher_cache.py), and the teacher is freed
    3. each step: both models' hidden states on the batch (the teacher in inference mode) or the cached bins, then the
       loss above from the heads in chunks over the completion positions, never materialising (batch, time, vocab)
    4. save final/, write evaluation.json: divergence to the teacher and perplexity on the eval split, before and after
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from posttrain.config import build_config, option
from posttrain.data import load_examples, pack_examples
from posttrain.engine import LossOutput, Method
from posttrain.errors import ConfigError
from posttrain.math import (
    DistillationLoss,
    chunked_cached_distillation_loss,
    chunked_distillation_loss,
    shifted_targets,
)
from posttrain.models import load_model
from posttrain.models.forward import as_root_forward, causal_lm, hidden_states
from posttrain.models.pruning import prune_in_memory
from posttrain.models.quantize import dequantized
from posttrain.trainers.common import (
    PolicyTrainingConfig,
    TrainingRun,
    apply_freeze,
    check_eval_suite,
    evaluation_summary,
    load_policy,
    log_trainable,
    train_and_save,
    write_evaluation,
)
from posttrain.trainers.teacher_cache import (
    TeacherTargets,
    cached_teacher_targets,
    collate_teacher_targets,
    teacher_cache_settings,
)

log = logging.getLogger(__name__)
DEFAULT_STUDENT = "smollm2-135m-instruct"


@dataclass
class DistillConfig(PolicyTrainingConfig):
    method: Literal["distill"] = option("distill", help="logit distillation: match the teacher's next-token "
                                                        "distributions on the completions, plus cross-entropy")
    model: str | None = option(None, help="the student to train: a built-in name, a local folder or a hub id; None: "
                                          f"{DEFAULT_STUDENT} unless `student` builds one")
    student: dict[str, Any] | None = option(None, help="build the student in memory by pruning a model (depth and/or "
                                                       "width) instead of loading `model`: {from: teacher (or a model "
                                                       "spec), keep_layers: [0, 2, ...] | every: 2 | num_layers: N, "
                                                       "select: block-influence | deep-block (with num_layers), "
                                                       "mlp_keep: fraction of MLP channels, calibration: JSONL}")
    teacher: str = option("smollm2-135m-instruct", help="the teacher model spec (a built-in name, a local folder such "
                                                        "as a run's final/, or a hub id); it must use the student's "
                                                        "tokenizer")
    teacher_dtype: str = option("auto", help="the teacher's weight dtype: auto (the dtype setting, float32 when that "
                                             "is auto too), float32, bfloat16 (half the memory; its logits are upcast "
                                             "to fp32 for the loss)")
    alpha: float = option(0.5, min=0, max=1, help="weight of the divergence term; 1 - alpha weighs the cross-entropy "
                                                  "on the data's labels")
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "tv"] = option(
        "forward_kl", help="D(teacher, student): forward_kl KL(p||q) (Hinton), reverse_kl KL(q||p), jsd the "
                           "generalized JSD with beta (GKD), tv total variation")
    beta: float = option(0.5, min=0, max=1, help="the JSD's interpolation (TRL's convention): 0 is forward KL, 1 "
                                                 "reverse KL; only with divergence=jsd")
    temperature: float = option(1.0, min=0.01, help="softens both distributions, softmax(logits / T); the divergence "
                                                    "is scaled by T^2 (Hinton et al. 2015)")
    teacher_top_k: int = option(0, min=0, help="keep only the teacher's top-k tokens per position plus the rest mass "
                                               "(a lower bound on the divergence, exact on its support); 0: the full "
                                               "vocabulary")
    teacher_cache: bool = option(False, help="offline KD: compute the teacher's top-k bins (teacher_top_k) for every "
                                             "train and eval row once, cache them on disk (keyed by teacher weights, "
                                             "rows, k, T) and train with the teacher unloaded")
    teacher_cache_dir: str | None = option(None, help="where teacher_cache keeps its folders; None: the posttrain "
                                                      "cache folder's teacher_top_k/")
    learning_rate: float = option(2e-5, min=0, help="AdamW's peak learning rate, reached after warmup_steps")

    def __post_init__(self) -> None:
        if self.teacher_cache and not self.teacher_top_k:
            raise ConfigError("teacher_cache stores the teacher's top-k bins per token: set teacher_top_k (e.g. 64); "
                              "the full vocabulary would be V floats per token")
        if self.student is None:
            self.model = DEFAULT_STUDENT if self.model is None else self.model
            return
        if self.model is not None:
            raise ConfigError(f"both model ({self.model!r}) and student are set: `student` builds the student by "
                              "pruning, `model` loads one; keep one of them (model: null)")
        student_settings(self.student)  # a bad section fails here, before any model loads
        if self.lora.enabled or self.quantization != "none":
            raise ConfigError("student: the pruned student exists only in memory, so it trains full weights (no "
                              "lora / quantization); prune it to a folder first with `posttrain prune` for LoRA")


@dataclass
class StudentSettings:
    """The student section, with ``from`` spelled ``source`` (``from`` is a Python keyword)."""

    source: str = option("teacher", help="the model to prune: `teacher` (the run's teacher spec) or a model spec")
    keep_layers: list[int] | None = option(None, help="the indices of the decoder layers to keep")
    every: int | None = option(None, min=1, help="keep layers 0, k, 2k, ... (DistilBERT's pattern)")
    num_layers: int | None = option(None, min=1, help="keep this many layers, chosen by `select`")
    select: Literal["block-influence", "deep-block"] = option(
        "block-influence", help="with num_layers: drop the layers of least block influence (ShortGPT), or the deepest "
                                "block but the last (Gromov et al. 2024)")
    mlp_keep: float | None = option(None, above=0, max=1, help="width pruning: the fraction of each MLP's channels "
                                                               "kept, by measured importance (with or without depth)")
    calibration: str | None = option(None, help="JSONL texts for block influence and MLP importance; None: built-in "
                                                "texts")


def student_settings(section: dict) -> StudentSettings:
    """The ``student`` section checked: known keys and types, at most one way of choosing the layers, and some
    pruning (layers or ``mlp_keep``)."""
    if "source" in section:
        raise ConfigError("student: unknown key 'source'; the model to prune is `from`")
    settings = build_config(StudentSettings, {("source" if k == "from" else k): v for k, v in section.items()},
                            source="config", prefix="student.")
    chosen = [k for k in ("keep_layers", "every", "num_layers") if getattr(settings, k) is not None]
    if len(chosen) > 1 or not (chosen or settings.mlp_keep):
        raise ConfigError(f"student: give exactly one of keep_layers, every, num_layers, or only mlp_keep (got "
                          f"{', '.join(chosen) or 'none'})")
    if settings.keep_layers is not None and len(set(settings.keep_layers)) != len(settings.keep_layers):
        raise ConfigError(f"student.keep_layers {settings.keep_layers}: a layer is named twice")
    return settings


def load_student(config: DistillConfig):
    """The student and its tokenizer: ``model`` loaded as every trainer loads its policy, or, with ``student``, the
    ``from`` model loaded and pruned in memory, depth and/or width (posttrain.models.pruning). Returns (model,
    tokenizer, report); the report (what was kept, parameters) is None without ``student``."""
    if config.student is None:
        return (*load_policy(config), None)
    settings = student_settings(config.student)
    spec = config.teacher if settings.source == "teacher" else settings.source
    check_eval_suite(config)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(spec, "float32" if config.dtype == "auto" else config.dtype, config.device,
                                  trust_remote_code=config.trust_remote_code)
    try:
        report = prune_in_memory(model, tokenizer, settings.num_layers, settings.keep_layers, settings.select,
                                 settings.calibration, every=settings.every, mlp_keep=settings.mlp_keep)
    except ConfigError as exc:
        raise ConfigError(f"student (pruning {spec!r}): {exc}") from None
    report = {"from": spec, **report}
    apply_freeze(model, config.freeze)
    log_trainable(model, f"student pruned from {spec}")
    return model, tokenizer, report


def student_name(config: DistillConfig, report: dict | None) -> str:
    """What the student is, for messages and evaluation.json: the model spec, or the pruned model's description."""
    if report is None:
        return config.model
    parts = [f"layers {','.join(map(str, report['kept_layers']))}"] if "kept_layers" in report else []
    parts += [f"mlp {report['intermediate_size']}/{report['intermediate_size_before']}"] if "mlp_keep" in report else []
    return f"{report['from']} {' '.join(parts)}"


class DistillMethod(Method):
    """Summed per-token alpha T^2 D + (1 - alpha) NLL over the completion tokens; metrics: divergence and NLL."""

    # tested under distributed.strategy: fsdp (tests/distributed): the student's loss runs as a forward of its root
    # (as_root_forward); the teacher stays a whole frozen copy on every rank
    fsdp = True

    def __init__(self, teacher, config: DistillConfig):
        self.teacher = teacher
        self.config = config

    def collate(self, examples: list, pad_token_id: int) -> dict[str, torch.Tensor]:
        if isinstance(examples[0], TeacherTargets):  # teacher_cache: the rows carry the teacher's top-k bins
            return collate_teacher_targets(examples, pad_token_id)
        return super().collate(examples, pad_token_id)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["loss_mask"][:, 1:].sum())

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        # under FSDP the student's embedding and head are gathered around it (the loss multiplies by the head's weight)
        out = as_root_forward(model, token_distillation_loss, model, self.teacher, batch, self.config)
        return LossOutput(out.loss_sum, {"divergence": float(out.divergence.sum()), "nll": float(-out.logps.sum())})


def token_distillation_loss(student, teacher, batch: dict[str, torch.Tensor],
                            config: DistillConfig) -> DistillationLoss:
    """The loss summed over the completion tokens, with each token's T^2 D(teacher, student) and log q(y_t); from the
    batch's cached teacher bins when it has them (teacher_cache), else from the live teacher."""
    targets, mask = shifted_targets(batch["input_ids"], batch["loss_mask"])
    student_rows = hidden_states(student, batch)[:, :-1][mask]  # (N, H_student): completion positions only
    student_head = causal_lm(student).get_output_embeddings()
    if "teacher_logps" in batch:
        return chunked_cached_distillation_loss(
            student_rows, student_head.weight, batch["teacher_logps"], batch["teacher_indices"], targets[mask],
            config.alpha, config.divergence, config.beta, config.temperature, student_head.bias,
            accumulate_grad_in_place=True)
    with torch.inference_mode():
        teacher_hidden = hidden_states(teacher, batch)
    teacher_rows = teacher_hidden[:, :-1][mask].clone()  # (N, H_teacher), an ordinary tensor again
    teacher_head = causal_lm(teacher).get_output_embeddings()
    return chunked_distillation_loss(
        student_rows, student_head.weight, teacher_rows, dequantized(teacher_head.weight), targets[mask], config.alpha,
        config.divergence, config.beta, config.temperature, config.teacher_top_k, student_head.bias, teacher_head.bias,
        accumulate_grad_in_place=True)


def load_teacher(config: DistillConfig, student, student_tokenizer, student_spec: str | None = None):
    """The frozen teacher, after checking that it tokenizes as the student does and predicts the same vocabulary."""
    student_spec = student_spec or config.model
    dtype = config.dtype if config.teacher_dtype == "auto" else config.teacher_dtype
    teacher, teacher_tokenizer = load_model(config.teacher, "float32" if dtype == "auto" else dtype, config.device,
                                            trust_remote_code=config.trust_remote_code)
    check_same_tokenizer(student_tokenizer, teacher_tokenizer, student_spec, config.teacher)
    student_rows = causal_lm(student).get_output_embeddings().weight.shape[0]
    teacher_rows = causal_lm(teacher).get_output_embeddings().weight.shape[0]
    if student_rows != teacher_rows:
        raise ConfigError(f"teacher {config.teacher!r} predicts {teacher_rows} tokens, student {student_spec!r} "
                          f"{student_rows}: distillation needs output heads over the same vocabulary")
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(causal_lm(teacher).config, name, None) or getattr(causal_lm(student).config, name, None):
            raise ConfigError(f"a model with {name} rescales its logits; distillation's chunked heads do not yet")
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, student_spec: str, teacher_spec: str) -> None:
    """One-line error unless both tokenizers map the same strings to the same ids (special tokens included)."""
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab == teacher_vocab:
        return
    differing = len(set(student_vocab.items()) ^ set(teacher_vocab.items()))
    raise ConfigError(
        f"teacher {teacher_spec!r} and student {student_spec!r} use different tokenizers ({len(teacher_vocab)} and "
        f"{len(student_vocab)} tokens, {differing} entries differ): token-level distillation compares the two "
        f"next-token distributions id by id, so pick a teacher from the student's model family")


def train_distill(config: DistillConfig, callbacks=None) -> dict:
    """Run logit distillation end to end; returns the evaluation dict (also written to output_dir/evaluation.json)."""
    model, tokenizer, pruned = load_student(config)
    name = student_name(config, pruned)
    teacher = load_teacher(config, model, tokenizer, name)

    train_examples, eval_examples = load_examples(config.data, tokenizer, "sft")
    if config.data.packing:
        train_examples = pack_examples(train_examples, config.data.max_length)
    cache = None
    if config.teacher_cache:
        settings = teacher_cache_settings(teacher, config.teacher_top_k, config.temperature, config.data.packing)
        rows, folder, reused = cached_teacher_targets(teacher, train_examples + eval_examples, settings,
                                                      tokenizer.pad_token_id, config.eval_batch_size,
                                                      config.teacher_cache_dir)
        train_examples, eval_examples = rows[: len(train_examples)], rows[len(train_examples):]
        cache = {"path": str(folder), "reused": reused, "top_k": config.teacher_top_k}
        del teacher  # offline KD: training never runs the teacher, so it leaves memory before the optimizer exists
        gc.collect()
        teacher = None

    run = train_and_save(config, model, tokenizer, DistillMethod(teacher, config), train_examples, eval_examples,
                         callbacks)
    evaluation = distill_evaluation(config, run, model, name, pruned)
    if cache is not None:
        evaluation["teacher_cache"] = cache
    return write_evaluation(config, evaluation, model, tokenizer)


def distill_evaluation(config: DistillConfig, run: TrainingRun, model, student: str | None = None,
                       pruned: dict | None = None) -> dict:
    """evaluation.json: held-out divergence to the teacher and perplexity, next to the step-0 baseline; with a
    pruned student, what was kept of which model."""
    def summary(record: dict) -> dict:
        return {"divergence": record["eval_divergence"], "perplexity": math.exp(record["eval_nll"]),
                "eval_loss": record["eval_loss"]}

    result = evaluation_summary(config, model, run, summary, "n_tokens", baseline_names=("divergence", "perplexity"))
    result["model"] = student or config.model
    result["teacher"] = config.teacher
    if pruned is not None:
        result["student"] = pruned
    if "divergence" in result["metrics"]:
        result["metrics"]["divergence"]["name"] = config.divergence
    return result
