"""On-policy distillation (GKD) and sequence-level KD: the student learns the teacher's distributions on completions
that it, or the teacher, sampled itself.

Generalized knowledge distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes", https://arxiv.org/abs/2306.13649; TRL's ``GKDTrainer``): at each step, with probability
lambda (``lmbda``, TRL's spelling) the step's completions are replaced by the student's own samples, otherwise the
data's completions are kept, and the loss is the token-level divergence on them,

    L(theta) = E_{x ~ data, y ~ (lambda: q_theta(.|x), 1 - lambda: data)} (1/|y|) sum_t D(p(.|x,y_<t), q(.|x,y_<t))

with D the generalized JSD with interpolation beta by default (beta 0: forward KL, 1: reverse KL). The gradient does
not flow through the sampling (as in the paper). Training on its own samples fixes the train/inference mismatch of
off-policy KD: the student learns what the teacher would do in the states the student actually reaches.

``seq_kd``: a step that is not on-policy trains on the *teacher's* completions instead of the data's (sequence-level
KD, Kim & Rush 2016, https://arxiv.org/abs/1606.07947). With ``lmbda: 0, seq_kd: true, alpha: 0`` and greedy
generation this is plain Seq-KD: SFT on the teacher's greedy outputs (configs/distill_seq.yaml).

Algorithm:
    1. load student, teacher (frozen; tokenizer checked) and the SFT data, as ``method: distill``
    2. each step: draw u ~ U(0, 1) seeded by (seed, step); u < lambda: sample completions for the step's prompts from
       the student; else with seq_kd from the teacher; else keep the data's completions
    3. loss of ``method: distill`` on those completions (alpha weighs D against the NLL of the completion tokens)
    4. evaluation on the held-out data's own completions: divergence to the teacher and perplexity
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data import collate_sequences, load_examples
from posttrain.engine import distributed, fsdp
from posttrain.errors import ConfigError
from posttrain.rollout import SamplingParams, sample
from posttrain.tasks import Problem, extract_answer, get_task
from posttrain.tasks.arithmetic import NumericTask
from posttrain.trainers.common import train_and_save, write_evaluation
from posttrain.trainers.distill import (
    DistillConfig,
    DistillMethod,
    distill_evaluation,
    load_student,
    load_teacher,
    student_name,
)
from posttrain.trainers.rl import rollout_seed

log = logging.getLogger(__name__)


@dataclass
class GKDConfig(DistillConfig):
    method: Literal["gkd"] = option("gkd", help="on-policy distillation (GKD): the divergence to the teacher on the "
                                                "student's own samples with probability lmbda, else on the data")
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "tv"] = option(
        "jsd", help="D(teacher, student): jsd the generalized JSD with beta (GKD's default), forward_kl, reverse_kl, "
                    "tv total variation")
    alpha: float = option(1.0, min=0, max=1, help="weight of the divergence; 1 - alpha weighs the NLL of the step's "
                                                  "completion tokens (GKD: 1; Seq-KD: 0)")
    lmbda: float = option(0.5, min=0, max=1, help="probability that a step trains on completions the student samples "
                                                  "itself (on-policy; TRL's lmbda)")
    seq_kd: bool = option(False, help="steps that are not on-policy train on completions the teacher samples "
                                      "(sequence-level KD) instead of the data's")
    max_new_tokens: int = option(128, min=1, help="longest sampled completion, in tokens")
    generation_temperature: float = option(0.9, min=0, help="sampling temperature of the student's and teacher's "
                                                            "completions; 0: greedy")
    top_p: float = option(1.0, min=0, max=1, help="nucleus sampling of the completions; 1: off")
    stop_strings: list[str] = option(default_factory=list, help="strings that end a completion (besides EOS)")
    seq_kd_checker: str | None = option(None, help="seq_kd: keep only the teacher's completions that this task's "
                                                   "checker accepts against the answer of the data's own completion "
                                                   "(a numeric task: arithmetic, word_problems, long_addition); the "
                                                   "others carry no loss. Kept and dropped counts are logged")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq_kd_checker is not None:
            if not self.seq_kd:
                raise ConfigError("seq_kd_checker filters the teacher's completions: it needs seq_kd: true")
            if not isinstance(get_task(self.seq_kd_checker), NumericTask):
                raise ConfigError(f"seq_kd_checker: task {self.seq_kd_checker!r} checks against a problem spec the "
                                  "data rows do not carry; use a task with a numeric answer (arithmetic, "
                                  "word_problems, long_addition)")


class GKDMethod(DistillMethod):
    """``DistillMethod``'s loss, after ``prepare_step`` has swapped the step's completions for sampled ones."""

    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed); sampling gathers the full weights

    def __init__(self, teacher, config: GKDConfig, tokenizer):
        super().__init__(teacher, config)
        self.tokenizer = tokenizer
        self.metrics: dict[str, float] = {}
        self.checker = get_task(config.seq_kd_checker) if config.seq_kd_checker else None
        self.checked = {"kept": 0, "dropped": 0}  # teacher completions over the run (resumed with the checkpoint)

    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]], step: int) -> None:
        if not model.training:  # held-out evaluation scores the data's own completions
            return
        draw = random.Random(rollout_seed(self.config.seed, step)).random()
        source = model if draw < self.config.lmbda else self.teacher if self.config.seq_kd else None
        self.metrics = {"on_policy": float(source is model), "teacher_generated": float(source is self.teacher)}
        if source is None:
            return
        params = SamplingParams(self.config.max_new_tokens, self.config.generation_temperature, self.config.top_p,
                                stop_strings=tuple(self.config.stop_strings), seed=rollout_seed(self.config.seed, step))
        generation_s, generated = 0.0, 0
        checked = source is self.teacher and self.checker is not None
        if checked:
            self.metrics.update(kd_kept=0.0, kd_dropped=0.0)
        # under torchrun this rank's prompts draw the streams of their places in the step batch (as one process
        # would); under FSDP the student is gathered once for all micro-batches (fsdp.full_weights)
        params.prompt_offset = distributed.items_before_rank(sum(b["input_ids"].shape[0] for b in micro_batches))
        rollouts = []
        with fsdp.full_weights(model) if source is model else contextlib.nullcontext():  # the teacher: whole
            for batch in micro_batches:
                rollouts.append(sample(source, self.tokenizer, prompt_ids(batch), params))
                params.prompt_offset += batch["input_ids"].shape[0]  # each micro-batch's prompts: their own streams
        for batch, rollout in zip(micro_batches, rollouts):
            prompts = prompt_ids(batch)
            references = reference_texts(batch, self.tokenizer) if checked else None
            lengths = rollout.completion_mask.sum(-1).tolist()
            rows = collate_sequences([(p, rollout.completion_ids[i, : lengths[i]].tolist())
                                      for i, p in enumerate(prompts)], self.tokenizer.pad_token_id)
            if checked:  # a rejected completion stays in the batch (shapes unchanged) but carries no loss
                accepted = checker_accepts(self.checker, references, rollout.texts)
                rows["loss_mask"][~torch.tensor(accepted)] = 0
                self.metrics["kd_kept"] += sum(accepted)
                self.metrics["kd_dropped"] += len(accepted) - sum(accepted)
            device = batch["input_ids"].device
            batch.clear()
            batch.update({k: v.to(device) for k, v in rows.items()})
            generation_s += rollout.generation_time_s
            generated += rollout.num_generated_tokens
        self.metrics.update(generation_s=generation_s, completion_length=generated / sum(
            b["input_ids"].shape[0] for b in micro_batches))
        if checked:
            self.checked["kept"] += int(self.metrics["kd_kept"])
            self.checked["dropped"] += int(self.metrics["kd_dropped"])

    def step_metrics(self) -> dict[str, float]:
        return self.metrics

    def state_dict(self) -> dict:
        return {"checked": dict(self.checked)}

    def load_state_dict(self, state: dict, step: int) -> None:
        self.checked = dict(state.get("checked", self.checked))


def reference_texts(batch: dict[str, torch.Tensor], tokenizer) -> list[str]:
    """Each row's own (data) completion, decoded: the answer key a teacher's completion is checked against."""
    keep = batch["loss_mask"].bool() & batch["attention_mask"].bool()
    return tokenizer.batch_decode([ids[row].tolist() for ids, row in zip(batch["input_ids"], keep)],
                                  skip_special_tokens=True)


def checker_accepts(task: NumericTask, references: list[str], completions: list[str]) -> list[bool]:
    """Whether ``task``'s checker accepts each completion, the answer being the one its reference states (none read
    off the reference: rejected)."""
    answers = [extract_answer(reference) for reference in references]
    return [answer is not None and task.is_correct(Problem("", str(answer)), completion)
            for answer, completion in zip(answers, completions)]


def prompt_ids(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each row's prompt: its real tokens before the first completion (loss) token. ``(B, T)`` rows -> B id lists."""
    prompts = []
    for ids, real, loss in zip(batch["input_ids"], batch["attention_mask"].bool(), batch["loss_mask"].bool()):
        first = int(loss.nonzero()[0]) if loss.any() else int(real.sum())
        prompts.append(ids[:first][real[:first]].tolist())
    return prompts


def train_gkd(config: GKDConfig, callbacks=None) -> dict:
    """Run on-policy distillation end to end; returns the evaluation dict (also written to evaluation.json)."""
    if config.data.packing:
        raise ConfigError("data.packing: gkd samples new completions per prompt, so rows cannot be packed; set "
                          "data.packing=false")
    if config.teacher_cache:
        raise ConfigError("teacher_cache: gkd scores completions sampled during training, which no cache of the "
                          "data's rows holds; use method: distill for offline KD")
    model, tokenizer, pruned = load_student(config)
    name = student_name(config, pruned)
    teacher = load_teacher(config, model, tokenizer, name)
    train_examples, eval_examples = load_examples(config.data, tokenizer, "sft")
    method = GKDMethod(teacher, config, tokenizer)
    run = train_and_save(config, model, tokenizer, method, train_examples, eval_examples, callbacks)
    evaluation = distill_evaluation(config, run, model, name, pruned)
    if method.checker is not None:
        evaluation["seq_kd_checker"] = {"task": config.seq_kd_checker, **method.checked}
        log.warning("seq-KD checker %s: kept %d of %d teacher completions", config.seq_kd_checker,
                    method.checked["kept"], method.checked["kept"] + method.checked["dropped"])
    return write_evaluation(config, evaluation, model, tokenizer)
