"""Depth pruning: kept layers bit-identical, a folder plain transformers loads and generates from (KV cache included),
block influence finds a layer that does nothing, and the fixed patterns and errors."""

import json

import pytest
import torch

from posttrain.cli import main
from posttrain.errors import ConfigError
from posttrain.models.pruning import block_influence, choose_layers, prune_layers


def _four_layer_model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, attn_implementation="sdpa")
    config.layer_types = ["full_attention"] * 4
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    path = tmp_path / "four"
    _four_layer_model().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _greedy_without_cache(model, ids, n):
    for _ in range(n):
        next_id = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_prune_keeps_named_layers_bit_identical_and_the_folder_loads_and_generates(tmp_path, model_dir, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(model_dir), "--layers", "0,3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept_layers"] == [0, 3] and report["dropped_layers"] == [1, 2]
    assert report["parameters_after"] < report["parameters_before"]
    assert json.loads((out / "pruning.json").read_text())["kept_layers"] == [0, 3]

    original = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    assert pruned.config.num_hidden_layers == 2 and pruned.config.layer_types == ["full_attention"] * 2
    before, after = original.state_dict(), pruned.state_dict()
    for name, tensor in after.items():
        source = name.replace("layers.1.", "layers.3.")  # new layer 1 is old layer 3; everything else keeps its name
        assert torch.equal(tensor, before[source]), name
    assert len(after) == len(before) - 2 * sum(1 for n in before if n.startswith("model.layers.1."))

    ids = torch.tensor([[1, 510, 2133, 314, 253, 1184]])
    with torch.no_grad():
        cached = pruned.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert torch.equal(cached, _greedy_without_cache(pruned, ids, 6))  # KV-cache slots renumbered


def test_block_influence_finds_a_layer_that_copies_its_input(tokenizer):
    model = _four_layer_model()
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: its output equals its input
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    influence = block_influence(model, tokenizer, ["a first calibration text", "and 2 + 2 = 4"])
    assert len(influence) == 4
    assert influence[2] == pytest.approx(0.0, abs=1e-6)
    assert all(score > 1e-3 for i, score in enumerate(influence) if i != 2)
    assert choose_layers(4, keep_layers=3, influence=influence) == [0, 1, 3]


def test_deep_block_keeps_the_first_layers_and_the_last():
    assert choose_layers(30, keep_layers=15, select="deep-block") == list(range(14)) + [29]
    assert choose_layers(30, keep_layers=30, select="deep-block") == list(range(30))
    assert choose_layers(4, keep_layers=1, select="deep-block") == [0]


def test_prune_layers_renumbers_cache_slots():
    model = prune_layers(_four_layer_model(), [1, 2])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize("kwargs,message", [
    ({"layers": [0, 7]}, "expected indices in 0..3"),
    ({"keep_layers": 0}, "expected 1..4"),
    ({"keep_layers": 2, "select": "middle"}, "expected one of"),
])
def test_bad_choices_fail_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        choose_layers(4, influence=[0.1] * 4, **kwargs)
