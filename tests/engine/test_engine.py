import json
import math

import pytest
import torch

from posttrain.engine.checkpoint import list_checkpoints
from posttrain.engine import Engine, EngineConfig, LossOutput, Method, NonFiniteLossError
from posttrain.engine.optimizer import lr_factor
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model, save_model
from posttrain.trainers.sft import SFTMethod
from tests.conftest import random_examples


def make_engine(tmp_path, name="run", examples=None, model=None, method=None, callbacks=None, **overrides):
    settings = dict(output_dir=str(tmp_path / name), max_steps=6, batch_size=4, learning_rate=1e-2,
                    logging_steps=1, progress_bar=False, eval_on_start=False)
    settings.update(overrides)
    config = EngineConfig(**settings)
    model = model or build_tiny_model(seed=0, vocab_size=256)
    return Engine(config, model, method or SFTMethod(), examples or random_examples(32, vocab=256), None,
                  pad_token_id=0, save_model=lambda d: save_model(model, None, d), callbacks=callbacks)


def read_log(path):
    return [json.loads(line) for line in (path / "log_history.jsonl").read_text().splitlines()]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """1 micro-batch of 8 and 8 micro-batches of 1 give the same loss and the same weights after each step."""
    examples = random_examples(16, seed=3, vocab=256, min_len=3, max_len=30)
    big = make_engine(tmp_path, "big", examples, batch_size=8, grad_accum_steps=1, max_steps=2)
    small = make_engine(tmp_path, "small", examples, batch_size=1, grad_accum_steps=8, max_steps=2)
    big.train()
    small.train()
    for a, b in zip(read_log(tmp_path / "big"), read_log(tmp_path / "small")):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5)
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)


class Interrupt(Exception):
    pass


# keep_grad_buffers: the uninterrupted run zeroes its kept gradients in place, the resumed one starts without any
@pytest.mark.parametrize("settings", [{}, {"batch_size": 2, "grad_accum_steps": 2}, {"keep_grad_buffers": True}])
def test_resume_equals_uninterrupted_run(tmp_path, settings):
    reference = make_engine(tmp_path, "ref", save_steps=3, **settings)
    reference.train()

    def stop_at_4(engine, state):
        if state["step"] == 4:
            raise Interrupt

    interrupted = make_engine(tmp_path, "resumed", save_steps=3, callbacks=[stop_at_4], **settings)
    with pytest.raises(Interrupt):
        interrupted.train()
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["step_3"]

    resumed = make_engine(tmp_path, "resumed", save_steps=3, **settings)  # fresh model: all from the checkpoint
    state = resumed.train()
    assert state["step"] == 6
    ref_log, res_log = read_log(tmp_path / "ref"), read_log(tmp_path / "resumed")
    assert [r["step"] for r in res_log] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in res_log] == [r["loss"] for r in ref_log]
    for p, q in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_refuses_finished_or_foreign_output_dir(tmp_path):
    (tmp_path / "done" / "final").mkdir(parents=True)
    (tmp_path / "done" / "evaluation.json").write_text("{}")  # written last: the run finished
    with pytest.raises(ConfigError, match="holds a finished run"):
        make_engine(tmp_path, "done").train()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no checkpoint"):
        make_engine(tmp_path, "other").train()


def test_overwrite_output_dir_replaces_the_previous_run_and_nothing_else(tmp_path):
    make_engine(tmp_path, "over", max_steps=3, save_steps=1).train()
    (tmp_path / "over" / "final").mkdir()
    (tmp_path / "over" / "notes.txt").write_text("mine")
    make_engine(tmp_path, "over", max_steps=2, overwrite_output_dir=True).train()
    assert [r["step"] for r in read_log(tmp_path / "over")] == [1, 2]  # not appended to the old log
    assert not (tmp_path / "over" / "checkpoints").exists() and not (tmp_path / "over" / "final").exists()
    assert (tmp_path / "over" / "notes.txt").read_text() == "mine"


def test_killed_checkpoint_save_leaves_the_previous_one_intact(tmp_path):
    engine = make_engine(tmp_path, save_steps=3)
    real_save = engine.save_model
    calls = []

    def dying_save(directory):
        calls.append(directory)
        real_save(directory)
        if len(calls) == 2:
            raise Interrupt  # like a kill after the weights were half written

    engine.save_model = dying_save
    with pytest.raises(Interrupt):
        engine.train()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_3"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_3"]  # no half-written folder left behind
    resumed = make_engine(tmp_path, save_steps=3)
    assert resumed.train()["step"] == 6


class NaNAt(Method):
    """SFT loss, but non-finite at the given optimizer steps."""

    def __init__(self, steps):
        self.steps, self.calls, self.inner = set(steps), 0, SFTMethod()

    def count(self, batch):
        return self.inner.count(batch)

    def loss(self, model, batch):
        self.calls += 1
        out = self.inner.loss(model, batch)
        if self.calls in self.steps:
            return LossOutput(out.loss_sum * float("nan"), out.metrics)
        return out


def test_nonfinite_step_is_skipped_and_reported(tmp_path):
    engine = make_engine(tmp_path, method=NaNAt({2}), max_steps=3)
    before = {}

    def snapshot(engine, state):
        if state["step"] == 1:
            before.update({n: p.detach().clone() for n, p in engine.model.named_parameters()})
        if state["step"] == 2:  # the skipped step must not move the weights
            for n, p in engine.model.named_parameters():
                assert torch.equal(p, before[n]), n

    engine.callbacks = [snapshot]
    state = engine.train()
    log = read_log(tmp_path / "run")
    assert log[1].get("skipped_nonfinite_steps") == 1 and state["nonfinite_total"] == 1
    assert math.isfinite(log[2]["loss"])


@pytest.mark.parametrize("fraction, warns", [(0.5, False), (0.2, True)])
def test_a_share_of_skipped_steps_above_the_threshold_warns(tmp_path, caplog, fraction, warns):
    engine = make_engine(tmp_path, method=NaNAt({2}), max_steps=3, warn_nonfinite_fraction=fraction)  # 1 of 3
    engine.train()
    assert ("1 of 3 steps were skipped" in caplog.text) == warns


def test_too_many_nonfinite_steps_stop_the_run(tmp_path):
    engine = make_engine(tmp_path, method=NaNAt({2, 3, 4}), max_consecutive_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        engine.train()


def test_learning_rate_schedules(tmp_path):
    engine = make_engine(tmp_path, max_steps=10, warmup_steps=2, lr_schedule="cosine")
    factors = [lr_factor(s, engine.total_steps, 2, "cosine") for s in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))
    assert lr_factor(6, engine.total_steps, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(9, engine.total_steps, 2, "constant") == 1.0


def test_early_stopping_with_patience(tmp_path):
    examples = random_examples(16, vocab=256)
    engine = make_engine(tmp_path, examples=examples, max_steps=50, eval_steps=1, patience=2, learning_rate=5.0)
    engine.eval_examples = random_examples(8, seed=9, vocab=256)  # a huge lr makes eval loss stop improving
    state = engine.train()
    assert state["stopped"].startswith("early stop") and state["step"] < 50


def test_gradient_buffers_are_kept_with_accumulation_and_freed_without(tmp_path):
    kept = make_engine(tmp_path, "kept", max_steps=2, batch_size=2, grad_accum_steps=2)
    kept.train()
    assert all(p.grad is not None and not p.grad.any() for p in kept.model.parameters())
    freed = make_engine(tmp_path, "freed", max_steps=2)
    freed.train()
    assert all(p.grad is None for p in freed.model.parameters())


def test_a_run_stopped_before_its_first_checkpoint_starts_again_and_ends_as_an_uninterrupted_one(tmp_path):
    """Killed after its step-0 files but before any checkpoint: the folder holds only the run's own outputs, so a
    re-run starts it again instead of refusing a 'non-empty' folder."""
    make_engine(tmp_path, "ref").train()

    def stop_at_2(engine, state):
        if state["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        make_engine(tmp_path, "cut", callbacks=[stop_at_2]).train()
    assert (tmp_path / "cut" / "log_history.jsonl").is_file() and not (tmp_path / "cut" / "checkpoints").exists()
    make_engine(tmp_path, "cut").train()
    assert read_log(tmp_path / "cut") == [dict(r, tokens_per_s=c["tokens_per_s"]) for r, c in
                                          zip(read_log(tmp_path / "ref"), read_log(tmp_path / "cut"))]


def test_what_interrupted_writes_left_is_removed_and_saves_do_not_nest_temporary_folders(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-step_3-abc" / ".tmp-.tmp-step_3-abc-def").mkdir(parents=True)
    (run / ".tmp-final-xyz").mkdir()
    (run / ".tmp-log_history.jsonl-123").write_text("half")
    make_engine(tmp_path, save_steps=2, save_total_limit=None).train()
    assert not [p for p in run.rglob(".*") if p.name.startswith((".tmp-", ".old-"))]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6"]


def test_a_run_whose_every_step_is_non_finite_fails(tmp_path):
    """Fewer steps than max_consecutive_nonfinite, all skipped: the run must not end as if it had trained."""
    with pytest.raises(NonFiniteLossError, match="every one of the 3 steps"):
        make_engine(tmp_path, method=NaNAt({1, 2, 3}), max_steps=3).train()


def test_an_atomic_write_into_an_atomic_writes_folder_does_not_nest(tmp_path):
    from posttrain.io import atomic_dir

    with atomic_dir(tmp_path / "checkpoint") as outer:
        with atomic_dir(outer) as inner:  # a model saved into the checkpoint being written
            assert inner == outer
            (inner / "weights").write_text("w")
        assert sorted(p.name for p in tmp_path.iterdir()) == [outer.name]  # one temporary folder, no sibling
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (tmp_path / "checkpoint" / "weights").read_text() == "w"
