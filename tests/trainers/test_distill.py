"""method: distill and gkd: the loss against the full-logits formula, the student learning the teacher's
distributions (on the data, and on its own samples), gradients only in the student, another tokenizer refused."""

import pytest
import torch

from posttrain.api import train
from posttrain.data import Example
from posttrain.data.batching import collate
from posttrain.data.synthetic import arithmetic_sft
from posttrain.errors import ConfigError
from posttrain.math import token_divergence
from posttrain.models import build_tiny_model, load_tokenizer
from posttrain.trainers.distill import DistillConfig, DistillMethod, check_same_tokenizer


def _teacher(seed=1):
    """A fixed tiny teacher with peaked next-token distributions (its final norm scaled up), unlike the student's."""
    teacher = build_tiny_model(seed=seed)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(8.0)
    return teacher.eval().requires_grad_(False)


@pytest.fixture
def teacher_dir(tmp_path, tokenizer):
    path = tmp_path / "teacher"
    _teacher().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _batch(tokenizer):
    rows = [("What is 2 + 3?", " It is 5."), ("Name a colour.", " Blue, like the sea.")]
    examples = []
    for prompt, completion in rows:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = prompt_ids + tokenizer(completion)["input_ids"]
        examples.append(Example(ids, [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids)), prompt))
    return collate(examples, tokenizer.pad_token_id)


@pytest.mark.parametrize("divergence,teacher_top_k", [("forward_kl", 0), ("jsd", 0), ("reverse_kl", 7)])
def test_loss_is_the_formula_on_full_logits_and_gradients_reach_only_the_student(tokenizer, divergence, teacher_top_k):
    student, teacher = build_tiny_model(seed=0), _teacher()
    teacher.requires_grad_(True)  # even a teacher that could take gradients gets none
    batch = _batch(tokenizer)
    config = DistillConfig(teacher="unused", alpha=0.3, divergence=divergence, beta=0.4, temperature=2.0,
                           teacher_top_k=teacher_top_k)
    out = DistillMethod(teacher, config).loss(student, batch)

    mask = batch["loss_mask"][:, 1:].bool()
    labels = batch["input_ids"][:, 1:][mask]
    student_logits = student(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1][mask]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
    soft = token_divergence(student_logits, teacher_logits, divergence, 0.4, 2.0, teacher_top_k)
    nll = torch.nn.functional.cross_entropy(student_logits, labels, reduction="none")
    expected = (0.3 * soft + 0.7 * nll).sum()
    torch.testing.assert_close(out.loss_sum, expected, atol=1e-4, rtol=1e-5)
    assert out.metrics["divergence"] == pytest.approx(float(soft.detach().sum()), rel=1e-5)
    assert out.metrics["nll"] == pytest.approx(float(nll.detach().sum()), rel=1e-5)

    out.loss_sum.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_distillation_lowers_the_divergence_to_a_fixed_teacher(tmp_path, write_jsonl, teacher_dir):
    train_rows, eval_rows = arithmetic_sft(n_train=64, n_eval=16, seed=4)
    config = {
        "method": "distill", "model": "tiny", "teacher": str(teacher_dir), "alpha": 1.0, "temperature": 1.0,
        "output_dir": str(tmp_path / "run"), "max_steps": 12, "batch_size": 8, "learning_rate": 5e-3,
        "lr_schedule": "constant", "logging_steps": 10, "eval_steps": 12, "progress_bar": False,
        "data": {"path": str(write_jsonl("train.jsonl", train_rows)),
                 "eval_path": str(write_jsonl("eval.jsonl", eval_rows)), "max_length": 96},
    }
    evaluation = train(config)
    before, after = evaluation["baseline"]["divergence"], evaluation["metrics"]["divergence"]["value"]
    assert evaluation["metrics"]["divergence"]["name"] == "forward_kl"
    assert after < 0.6 * before, (before, after)  # 1.21 -> 0.48 nats per token


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, write_jsonl, tokenizer):
    other = load_tokenizer("tiny")
    other.add_tokens(["<extra_token>"])
    path = tmp_path / "other_teacher"
    build_tiny_model(seed=1).save_pretrained(path)
    other.save_pretrained(path)
    with pytest.raises(ConfigError, match="different tokenizers"):
        check_same_tokenizer(tokenizer, other, "tiny", str(path))
    rows, _ = arithmetic_sft(n_train=4, n_eval=1, seed=0)
    with pytest.raises(ConfigError, match="different tokenizers"):
        train({"method": "distill", "model": "tiny", "teacher": str(path), "output_dir": str(tmp_path / "run"),
               "max_steps": 1, "progress_bar": False, "data": {"path": str(write_jsonl("t.jsonl", rows))}})


def _gkd_config(tmp_path, write_jsonl, teacher_dir, **overrides):
    train_rows, eval_rows = arithmetic_sft(n_train=64, n_eval=16, seed=5)
    config = {
        "method": "gkd", "model": "tiny", "teacher": str(teacher_dir), "output_dir": str(tmp_path / "gkd"),
        "max_steps": 12, "batch_size": 8, "learning_rate": 5e-3, "lr_schedule": "constant", "logging_steps": 1,
        "eval_steps": 12, "progress_bar": False, "max_new_tokens": 8, "lmbda": 1.0, "divergence": "forward_kl",
        "data": {"path": str(write_jsonl("train.jsonl", train_rows)),
                 "eval_path": str(write_jsonl("eval.jsonl", eval_rows)), "max_length": 96},
    }
    config.update(overrides)
    return config


def _log(tmp_path):
    import json

    return [json.loads(line) for line in (tmp_path / "gkd" / "log_history.jsonl").read_text().splitlines()]


def test_on_policy_distillation_lowers_the_divergence_on_the_students_own_samples(tmp_path, write_jsonl, teacher_dir):
    train(_gkd_config(tmp_path, write_jsonl, teacher_dir, learning_rate=1e-2, eval_steps=None,
                      generation_temperature=0.0))
    steps = [r for r in _log(tmp_path) if "on_policy" in r]
    assert len(steps) == 12 and all(r["on_policy"] == 1.0 and r["completion_length"] <= 8 for r in steps)
    # what GKD minimises: the divergence on completions the student samples itself (~1.04 -> ~0.1 nats per token)
    first, last = [r["divergence"] for r in steps[:2]], [r["divergence"] for r in steps[-4:]]
    assert sum(last) / len(last) < 0.3 * sum(first) / len(first), [r["divergence"] for r in steps]


def test_sequence_level_kd_trains_on_teacher_samples(tmp_path, write_jsonl, teacher_dir):
    train(_gkd_config(tmp_path, write_jsonl, teacher_dir, lmbda=0.0, seq_kd=True, alpha=0.0, max_steps=2,
                      eval_steps=None, generation_temperature=0.0))
    steps = [r for r in _log(tmp_path) if "teacher_generated" in r]
    assert steps and all(r["teacher_generated"] == 1.0 and r["on_policy"] == 0.0 for r in steps)


def test_prompt_ids_are_the_real_tokens_before_the_completion(tokenizer):
    from posttrain.trainers.gkd import prompt_ids

    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 2], [9, 10, 11, 2, 2]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
             "loss_mask": torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])}
    assert prompt_ids(batch) == [[5, 6], [9]]


def test_a_bf16_teacher_gives_nearly_the_fp32_loss(tokenizer):
    student, teacher = build_tiny_model(seed=0), _teacher()
    batch, config = _batch(tokenizer), DistillConfig(teacher="unused")
    full = DistillMethod(teacher, config).loss(student, batch).loss_sum
    half = DistillMethod(teacher.to(torch.bfloat16), config).loss(student, batch).loss_sum
    assert half.item() == pytest.approx(full.item(), rel=2e-2) and half.item() != full.item()
