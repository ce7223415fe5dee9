"""Logit distillation: a student learns the teacher's next-token distributions on SFT data, plus the labels.

    L(theta) = (1/|C|) sum_{t in C} [ alpha T^2 D(p_t, q_theta,t) + (1 - alpha) (- log q_theta(y_t | y_<t)) ]

p_t = softmax(z^teacher_t / T), q_theta,t = softmax(z^student_t / T); D is forward KL (Hinton et al. 2015), reverse KL,
the generalized JSD of Agarwal et al. 2024 (GKD) or total variation (posttrain.math.distillation); C are the completion
tokens of the step batch, masked exactly as SFT masks them.

Algorithm:
    1. load the student (+ LoRA) and the teacher (frozen, eval mode, optionally bf16); refuse a teacher whose tokenizer
       differs from the student's (the divergence compares distributions token id by token id)
    2. tokenize the data with completion masks, as SFT
    3. each step: both models' hidden states on the batch (the teacher in inference mode), then the loss above from
       both heads in chunks over the completion positions, never materialising (batch, time, vocab) logits
    4. save final/, write evaluation.json: divergence to the teacher and perplexity on the eval split, before and after
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data import load_examples, pack_examples
from posttrain.engine import LossOutput, Method
from posttrain.errors import ConfigError
from posttrain.math import DistillationLoss, chunked_distillation_loss, shifted_targets
from posttrain.models import load_model
from posttrain.models.forward import causal_lm, hidden_states
from posttrain.trainers.common import (
    PolicyTrainingConfig,
    TrainingRun,
    evaluation_summary,
    load_policy,
    train_and_save,
    write_evaluation,
)

log = logging.getLogger(__name__)


@dataclass
class DistillConfig(PolicyTrainingConfig):
    method: Literal["distill"] = option("distill", help="logit distillation: match the teacher's next-token "
                                                        "distributions on the completions, plus cross-entropy")
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
    learning_rate: float = option(2e-5, min=0, help="AdamW's peak learning rate, reached after warmup_steps")


class DistillMethod(Method):
    """Summed per-token alpha T^2 D + (1 - alpha) NLL over the completion tokens; metrics: divergence and NLL."""

    def __init__(self, teacher, config: DistillConfig):
        self.teacher = teacher
        self.config = config

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["loss_mask"][:, 1:].sum())

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        out = token_distillation_loss(model, self.teacher, batch, self.config)
        return LossOutput(out.loss_sum, {"divergence": float(out.divergence.sum()), "nll": float(-out.logps.sum())})


def token_distillation_loss(student, teacher, batch: dict[str, torch.Tensor],
                            config: DistillConfig) -> DistillationLoss:
    """The loss summed over the completion tokens, with each token's T^2 D(teacher, student) and log q(y_t)."""
    targets, mask = shifted_targets(batch["input_ids"], batch["loss_mask"])
    student_rows = hidden_states(student, batch)[:, :-1][mask]  # (N, H_student): completion positions only
    with torch.inference_mode():
        teacher_hidden = hidden_states(teacher, batch)
    teacher_rows = teacher_hidden[:, :-1][mask].clone()  # (N, H_teacher), an ordinary tensor again
    student_head, teacher_head = causal_lm(student).get_output_embeddings(), causal_lm(teacher).get_output_embeddings()
    return chunked_distillation_loss(
        student_rows, student_head.weight, teacher_rows, teacher_head.weight, targets[mask], config.alpha,
        config.divergence, config.beta, config.temperature, config.teacher_top_k, student_head.bias, teacher_head.bias,
        accumulate_grad_in_place=True)


def load_teacher(config: DistillConfig, student, student_tokenizer):
    """The frozen teacher, after checking that it tokenizes as the student does and predicts the same vocabulary."""
    dtype = config.dtype if config.teacher_dtype == "auto" else config.teacher_dtype
    teacher, teacher_tokenizer = load_model(config.teacher, "float32" if dtype == "auto" else dtype, config.device,
                                            trust_remote_code=config.trust_remote_code)
    check_same_tokenizer(student_tokenizer, teacher_tokenizer, config.model, config.teacher)
    student_rows = causal_lm(student).get_output_embeddings().weight.shape[0]
    teacher_rows = causal_lm(teacher).get_output_embeddings().weight.shape[0]
    if student_rows != teacher_rows:
        raise ConfigError(f"teacher {config.teacher!r} predicts {teacher_rows} tokens, student {config.model!r} "
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
    model, tokenizer = load_policy(config)
    teacher = load_teacher(config, model, tokenizer)

    train_examples, eval_examples = load_examples(config.data, tokenizer, "sft")
    if config.data.packing:
        train_examples = pack_examples(train_examples, config.data.max_length)

    run = train_and_save(config, model, tokenizer, DistillMethod(teacher, config), train_examples, eval_examples,
                         callbacks)
    return write_evaluation(config, distill_evaluation(config, run, model), model, tokenizer)


def distill_evaluation(config: DistillConfig, run: TrainingRun, model) -> dict:
    """evaluation.json: held-out divergence to the teacher and perplexity, next to the step-0 baseline."""
    def summary(record: dict) -> dict:
        return {"divergence": record["eval_divergence"], "perplexity": math.exp(record["eval_nll"]),
                "eval_loss": record["eval_loss"]}

    result = evaluation_summary(config, model, run, summary, "n_tokens", baseline_names=("divergence", "perplexity"))
    result["teacher"] = config.teacher
    if "divergence" in result["metrics"]:
        result["metrics"]["divergence"]["name"] = config.divergence
    return result
