"""optimizer_in_backward: the same AdamW updates as the normal step, without ever holding every gradient at once."""

import math

import pytest
import torch

from posttrain.engine.checkpoint import list_checkpoints
from posttrain.engine import LossOutput, Method
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model
from tests.conftest import random_examples
from tests.engine.test_engine import Interrupt, NaNAt, make_engine, read_log

IN_BACKWARD = {"optimizer_in_backward": True, "max_grad_norm": 0.0}


@pytest.mark.parametrize("schedule", [{"lr_schedule": "constant"}, {"lr_schedule": "cosine", "warmup_steps": 2,
                                                                    "weight_decay": 0.1}])
def test_same_losses_weights_and_grad_norms_as_the_normal_step(tmp_path, schedule):
    """Without clipping the two paths make the same AdamW update: per parameter, with the same moments, step count
    and learning rate (the schedule and weight decay included)."""
    examples = random_examples(24, seed=1, vocab=256, min_len=3, max_len=30)
    normal = make_engine(tmp_path, "normal", examples, max_grad_norm=0.0, max_steps=4, **schedule)
    in_backward = make_engine(tmp_path, "in_backward", examples, max_steps=4, **IN_BACKWARD, **schedule)
    normal.train()
    in_backward.train()
    for a, b in zip(read_log(tmp_path / "normal"), read_log(tmp_path / "in_backward"), strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5)
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-4)
        assert a["lr"] == b["lr"]
    moved = False
    for (name, p), q, initial in zip(normal.model.named_parameters(), in_backward.model.parameters(),
                                     build_tiny_model(seed=0, vocab_size=256).parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
        moved |= not torch.equal(q, initial)
    assert moved  # the comparison is between trained weights, not two untouched models
    assert all(p.grad is None for p in in_backward.model.parameters())


def test_gradients_are_freed_as_backward_goes(tmp_path):
    """The memory claim: when a parameter's gradient is complete, the gradients of the parameters stepped before it
    are already freed. Alive at most: the current one and the tied embedding / output head, which our backward
    functions fill in place from the first backward op (the head) to the last (the embedding)."""
    engine = make_engine(tmp_path, max_steps=2, **IN_BACKWARD)
    params = [p for p in engine.model.parameters() if p.requires_grad]
    alive = []
    # registered before the engine's own hooks, so it runs first: it sees the current gradient and the earlier ones
    for param in params:
        param.register_post_accumulate_grad_hook(lambda _: alive.append(sum(q.grad is not None for q in params)))
    engine.train()
    assert len(alive) == 2 * len(params)  # every parameter's hook, every step
    assert max(alive) <= 2
    # the normal path, for contrast, holds them all by the end of backward
    normal = make_engine(tmp_path, "normal", max_steps=1, max_grad_norm=0.0)
    seen = []
    for param in normal.model.parameters():
        param.register_post_accumulate_grad_hook(
            lambda _: seen.append(sum(q.grad is not None for q in normal.model.parameters())))
    normal.train()
    assert max(seen) == len(params)


def test_resume_equals_uninterrupted_run(tmp_path):
    reference = make_engine(tmp_path, "ref", save_steps=3, lr_schedule="cosine", **IN_BACKWARD)
    reference.train()

    def stop_at_4(engine, state):
        if state["step"] == 4:
            raise Interrupt

    interrupted = make_engine(tmp_path, "resumed", save_steps=3, lr_schedule="cosine", callbacks=[stop_at_4],
                              **IN_BACKWARD)
    with pytest.raises(Interrupt):
        interrupted.train()
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["step_3"]
    resumed = make_engine(tmp_path, "resumed", save_steps=3, lr_schedule="cosine", **IN_BACKWARD)
    resumed.train()
    ref_log, res_log = read_log(tmp_path / "ref"), read_log(tmp_path / "resumed")
    assert [r["step"] for r in res_log] == [1, 2, 3, 4, 5, 6]
    assert [(r["loss"], r["lr"]) for r in res_log] == [(r["loss"], r["lr"]) for r in ref_log]
    for p, q in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_nonfinite_loss_skips_the_backward_and_the_update(tmp_path):
    engine = make_engine(tmp_path, method=NaNAt({2}), max_steps=3, **IN_BACKWARD)
    before = {}

    def snapshot(engine, state):
        if state["step"] == 1:
            before.update({n: p.detach().clone() for n, p in engine.model.named_parameters()})
        if state["step"] == 2:
            for n, p in engine.model.named_parameters():
                assert torch.equal(p, before[n]), n

    engine.callbacks = [snapshot]
    state = engine.train()
    assert read_log(tmp_path / "run")[1].get("skipped_nonfinite_steps") == 1 and state["nonfinite_total"] == 1


@pytest.mark.parametrize("settings, key", [
    ({"optimizer_in_backward": True}, "max_grad_norm=0"),  # the default clips at 1.0
    ({**IN_BACKWARD, "batch_size": 2, "grad_accum_steps": 2}, "grad_accum_steps=1"),
    ({**IN_BACKWARD, "keep_grad_buffers": True}, "keep_grad_buffers"),
])
def test_settings_it_cannot_honour_are_refused(tmp_path, settings, key):
    with pytest.raises(ConfigError, match=key):
        make_engine(tmp_path, **settings)


def test_lora_adapters_only(tmp_path):
    """With LoRA only the adapters are trainable: they get hooks, the frozen base is left alone."""
    from posttrain.models.lora import LoraSettings, apply_lora

    model = apply_lora(build_tiny_model(seed=0, vocab_size=256), LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    normal_model = apply_lora(build_tiny_model(seed=0, vocab_size=256), LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0))
    normal_model.load_state_dict(model.state_dict())
    examples = random_examples(16, seed=2, vocab=256)
    make_engine(tmp_path, "in_backward", examples, model=model, max_steps=3, **IN_BACKWARD).train()
    make_engine(tmp_path, "normal", examples, model=normal_model, max_steps=3, max_grad_norm=0.0).train()
    for (name, p), q in zip(model.named_parameters(), normal_model.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
        else:
            assert torch.equal(p, base[name]), name


class HeadThroughAutograd(Method):
    """Next-token NLL with the input embedding added into ``.grad`` in place (``hidden_states``) and the tied output
    head through autograd: the tied weight's gradient arrives both ways, the autograd part first."""

    def count(self, batch):
        return int(batch["loss_mask"][:, 1:].sum())

    def loss(self, model, batch):
        from posttrain.models.forward import hidden_states

        logits = model.lm_head(hidden_states(model, batch))[:, :-1]
        mask = batch["loss_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits[mask], batch["input_ids"][:, 1:][mask], reduction="sum")
        return LossOutput(nll)


def test_a_weight_whose_gradient_arrives_in_place_and_through_autograd_is_stepped_once(tmp_path):
    """Its hook must fire only once both parts are in ``.grad`` (autograd runs it after every backward function with
    an edge to the weight, ours included), or the weight would be stepped twice in one step or with half a
    gradient."""
    examples = random_examples(16, seed=4, vocab=256)
    normal = make_engine(tmp_path, "normal", examples, method=HeadThroughAutograd(), max_steps=3, max_grad_norm=0.0)
    in_backward = make_engine(tmp_path, "in_backward", examples, method=HeadThroughAutograd(), max_steps=3,
                              **IN_BACKWARD)
    assert in_backward.model.lm_head.weight is in_backward.model.get_input_embeddings().weight  # tied
    normal.train()
    in_backward.train()
    for (name, p), q in zip(normal.model.named_parameters(), in_backward.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    assert [r["step"] for r in read_log(tmp_path / "in_backward")] == [1, 2, 3]
    state = in_backward.optimizer.state[in_backward.model.lm_head.weight]
    assert float(state["step"]) == 3  # one AdamW step per optimizer step, not two
