"""Freezing: frozen parameters stay bit-identical through training, get no gradient and no optimizer state, and
the optimizer state shrinks by exactly their AdamW moments; the ``freeze`` config section reaches every method
through load_policy; bad layer specs are one-line errors."""

import pytest
import torch
from safetensors.torch import load_file

from posttrain.api import train
from posttrain.data.synthetic import arithmetic_sft
from posttrain.engine import Engine, EngineConfig
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model, save_model
from posttrain.models.freeze import FreezeSettings, decoder_layers, freeze_parameters, parse_layer_spec
from posttrain.trainers.sft import SFTMethod
from tests.conftest import random_examples


def optimizer_state_bytes(optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


def run_engine(tmp_path, name, freeze: FreezeSettings | None):
    model = build_tiny_model(seed=0, vocab_size=256)
    if freeze:
        freeze_parameters(model, freeze)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = EngineConfig(output_dir=str(tmp_path / name), max_steps=4, batch_size=4, learning_rate=1e-2,
                          progress_bar=False, eval_on_start=False, lr_schedule="constant")
    engine = Engine(config, model, SFTMethod(), random_examples(16, vocab=256), None, pad_token_id=0,
                    save_model=lambda d: save_model(model, None, d))
    engine.train()
    return engine, before


def test_frozen_weights_bit_identical_and_without_optimizer_state(tmp_path):
    full, _ = run_engine(tmp_path, "full", None)
    frozen, before = run_engine(tmp_path, "frozen", FreezeSettings(embeddings=True, layers="0"))
    model = frozen.model
    frozen_params = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    names = {n for n, _ in frozen_params}
    assert "model.embed_tokens.weight" in names and any(n.startswith("model.layers.0.") for n in names)
    assert not any(n.startswith("model.layers.1.") for n in names)
    for name, param in model.named_parameters():
        if name in names:
            assert torch.equal(param, before[name]), name
            assert param.grad is None
        else:
            assert not torch.equal(param, before[name]), name  # the rest trained
    in_optimizer = {id(p) for group in frozen.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for _, p in frozen_params}
    # AdamW keeps exp_avg and exp_avg_sq (fp32: 4 bytes each per element) and a 4-byte step per parameter tensor
    saved = sum(2 * 4 * p.numel() + 4 for _, p in frozen_params)
    assert optimizer_state_bytes(full.optimizer) - optimizer_state_bytes(frozen.optimizer) == saved
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert optimizer_state_bytes(frozen.optimizer) == sum(2 * 4 * p.numel() + 4 for p in trainable)


def test_layer_specs():
    assert parse_layer_spec("0-3,8", 12) == [0, 1, 2, 3, 8]
    assert parse_layer_spec(" 2 ", 4) == [2]
    with pytest.raises(ConfigError, match=r"outside the model's layers 0-1"):
        parse_layer_spec("0-2", 2)
    with pytest.raises(ConfigError, match="not a list of layer indices"):
        parse_layer_spec("first half", 2)
    assert len(decoder_layers(build_tiny_model())) == 2


def test_freeze_section_reaches_sft_through_the_config(tmp_path, write_jsonl):
    rows, _ = arithmetic_sft(n_train=16, n_eval=0, seed=1)
    path = write_jsonl("train.jsonl", rows)
    evaluation = train({"method": "sft", "model": "tiny", "output_dir": str(tmp_path / "run"), "max_steps": 2,
                        "batch_size": 4, "learning_rate": 1e-2, "progress_bar": False,
                        "freeze": {"embeddings": True, "layers": "0-1"}, "data": {"path": str(path), "max_length": 64}})
    initial = build_tiny_model(seed=0).state_dict()
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    for name, tensor in final.items():  # everything but the final norm is frozen
        assert torch.equal(tensor, initial[name]) == (name != "model.norm.weight"), name
    assert evaluation["trainable_parameters"] == initial["model.norm.weight"].numel()
