"""Distillation's smaller students and offline teachers: ``student: {from: teacher, ...}`` prunes the teacher in memory
(kept layers bit-identical, then KD lowers the divergence), its bad combinations fail in one line, and
``teacher_cache`` trains with the teacher's cached top-k bins exactly as with the live teacher restricted to the same
k, reusing the cache on a second run and never for another k or teacher."""

import json

import pytest
import torch

from posttrain.api import build_method_config, train
from posttrain.data.synthetic import arithmetic_sft
from posttrain.errors import ConfigError
from posttrain.trainers.distill import load_student, student_name
from posttrain.trainers.teacher_cache import cached_teacher_targets, teacher_cache_settings


def _four_layer_teacher(seed=1):
    """A 4-layer Llama over the tiny tokenizer's vocabulary with peaked next-token distributions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    return model


@pytest.fixture
def teacher_dir(tmp_path, tokenizer):
    path = tmp_path / "teacher4"
    _four_layer_teacher().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _config(tmp_path, write_jsonl, teacher_dir, **overrides):
    train_rows, eval_rows = arithmetic_sft(n_train=48, n_eval=8, seed=3)
    config = {
        "method": "distill", "teacher": str(teacher_dir), "alpha": 1.0, "output_dir": str(tmp_path / "run"),
        "max_steps": 10, "batch_size": 8, "learning_rate": 5e-3, "lr_schedule": "constant", "logging_steps": 1,
        "eval_steps": 10, "progress_bar": False,
        "data": {"path": str(write_jsonl("train.jsonl", train_rows)),
                 "eval_path": str(write_jsonl("eval.jsonl", eval_rows)), "max_length": 96},
    }
    config.update(overrides)
    return config


def _losses(output_dir):
    lines = (output_dir / "log_history.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record and "eval_loss" not in record]


def test_a_student_pruned_from_the_teacher_keeps_its_layers_and_learns_from_it(tmp_path, write_jsonl, teacher_dir):
    from transformers import AutoModelForCausalLM

    evaluation = train(_config(tmp_path, write_jsonl, teacher_dir, learning_rate=1e-3,
                               student={"from": "teacher", "keep_layers": [0, 3]}))
    assert evaluation["student"]["kept_layers"] == [0, 3] and evaluation["student"]["dropped_layers"] == [1, 2]
    assert evaluation["model"] == f"{teacher_dir} layers 0,3"
    # the pruned student starts away from its teacher, and distillation brings it closer (0.41 -> 0.03 nats)
    assert evaluation["metrics"]["divergence"]["value"] < 0.3 * evaluation["baseline"]["divergence"], evaluation
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert final.config.num_hidden_layers == 2

    # before training, the student is the teacher's layers 0 and 3, bit for bit
    typed = build_method_config(_config(tmp_path, write_jsonl, teacher_dir,
                                        student={"from": "teacher", "keep_layers": [0, 3]}))[1]
    student, _, report = load_student(typed)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).state_dict()
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, teacher[name.replace("layers.1.", "layers.3.")]), name
    assert report["parameters_after"] < report["parameters_before"]


def test_every_and_num_layers_choose_the_students_layers(tmp_path, write_jsonl, teacher_dir):
    every = build_method_config(_config(tmp_path, write_jsonl, teacher_dir, student={"from": "teacher", "every": 2}))[1]
    assert load_student(every)[2]["kept_layers"] == [0, 2]
    counted = build_method_config(_config(tmp_path, write_jsonl, teacher_dir, method="gkd",
                                          student={"from": str(teacher_dir), "num_layers": 3}))[1]
    report = load_student(counted)[2]
    assert len(report["kept_layers"]) == 3 and len(report["block_influence"]) == 4
    dropped = min(range(4), key=lambda i: report["block_influence"][i])
    assert report["dropped_layers"] == [dropped]
    narrow = build_method_config(_config(tmp_path, write_jsonl, teacher_dir,
                                         student={"from": "teacher", "mlp_keep": 0.5}))[1]
    student, _, report = load_student(narrow)
    assert student.config.intermediate_size == 64 and student.config.num_hidden_layers == 4
    assert student_name(narrow, report) == f"{teacher_dir} mlp 64/128"


@pytest.mark.parametrize("overrides,message", [
    ({"model": "tiny", "student": {"from": "teacher", "every": 2}}, "both model .* and student are set"),
    ({"student": {"from": "teacher", "every": 2, "num_layers": 2}}, "exactly one of keep_layers, every, num_layers"),
    ({"student": {"from": "teacher"}}, r"exactly one of .* \(got none\)"),
    ({"student": {"from": "teacher", "mlp_keep": 1.5}}, "student.mlp_keep"),
    ({"student": {"from": "teacher", "keep": [0]}}, "unknown key 'student.keep'"),
    ({"student": {"from": "teacher", "every": 0}}, "student.every"),
    ({"student": {"from": "teacher", "keep_layers": [1, 1]}}, "named twice"),
    ({"student": {"from": "teacher", "every": 2}, "lora": {"enabled": True}}, "full weights"),
    ({"teacher_cache": True}, "set teacher_top_k"),
    ({"method": "gkd", "teacher_cache": True, "teacher_top_k": 4}, "use method: distill"),
])
def test_bad_student_and_cache_settings_fail_in_one_line(tmp_path, write_jsonl, teacher_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(_config(tmp_path, write_jsonl, teacher_dir, **overrides))


def test_layer_indices_outside_the_teacher_fail_in_one_line(tmp_path, write_jsonl, teacher_dir):
    message = r"student \(pruning .*teacher4'\): layers \[0, 9\]: expected indices in 0..3"
    with pytest.raises(ConfigError, match=message):
        train(_config(tmp_path, write_jsonl, teacher_dir, student={"from": "teacher", "keep_layers": [0, 9]}))


def test_cached_teacher_gives_the_live_top_k_losses_and_is_reused(tmp_path, write_jsonl, teacher_dir):
    common = {"model": "tiny", "teacher_top_k": 5, "temperature": 2.0, "divergence": "jsd", "alpha": 0.7,
              "max_steps": 4, "eval_steps": 4, "teacher_cache_dir": str(tmp_path / "cache")}
    live = train(_config(tmp_path, write_jsonl, teacher_dir, output_dir=str(tmp_path / "live"), **common))
    teachers_in_training = []
    first = train(_config(tmp_path, write_jsonl, teacher_dir, output_dir=str(tmp_path / "cached"),
                          teacher_cache=True, **common),
                  callbacks=[lambda engine, state: teachers_in_training.append(engine.method.teacher)])
    assert teachers_in_training == [None] * 4  # the teacher is gone before the first step
    again = train(_config(tmp_path, write_jsonl, teacher_dir, output_dir=str(tmp_path / "again"),
                          teacher_cache=True, **common))
    assert first["teacher_cache"]["reused"] is False and again["teacher_cache"]["reused"] is True
    assert first["teacher_cache"]["path"] == again["teacher_cache"]["path"]
    live_losses = _losses(tmp_path / "live")
    assert len(live_losses) == 4 and len(set(live_losses)) == 4  # the student moves: four different losses
    for run in ("cached", "again"):
        assert _losses(tmp_path / run) == pytest.approx(live_losses, abs=1e-6, rel=0)
    for evaluation in (first, again):
        for name in ("divergence", "perplexity"):
            assert evaluation["metrics"][name]["value"] == pytest.approx(live["metrics"][name]["value"], abs=1e-6)


def test_another_k_or_teacher_never_reads_the_cache(tmp_path, tokenizer):
    from posttrain.data import Example
    from posttrain.models import build_tiny_model

    rows = [Example([1, 5, 6, 7, 8], [0, 0, 1, 1, 1], "a"), Example([1, 9, 10, 11], [0, 1, 1, 1], "b")]
    teacher, other = build_tiny_model(seed=1), build_tiny_model(seed=2)

    def folder(model, k, examples=rows):
        settings = teacher_cache_settings(model, k, 1.0, False)
        targets, path, reused = cached_teacher_targets(model, examples, settings, tokenizer.pad_token_id, 2,
                                                       tmp_path)
        assert [t.logps.shape for t in targets] == [(3, k + 1), (3, k + 1)]
        return path, reused

    base, reused = folder(teacher, 4)
    assert not reused and folder(teacher, 4) == (base, True)
    for path, reused in (folder(teacher, 3), folder(other, 4), folder(teacher, 4, rows[:1] + [rows[0]])):
        assert path != base and not reused
