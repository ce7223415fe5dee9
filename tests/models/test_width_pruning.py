"""Width pruning (``posttrain prune --mlp-keep``): channels that add nothing are the ones dropped, so the pruned model
computes the same logits; kept rows and columns are bit-identical; the folder loads in plain transformers with the
smaller intermediate_size and generates; depth and width combine; bad requests fail in one line."""

import json

import pytest
import torch

from posttrain.cli import main
from posttrain.errors import ConfigError
from posttrain.models.pruning import mlp_channel_importance, prune_in_memory


def _model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _silence_channels(model, seed=0):
    """Zero the down-projection columns of a random half of each layer's channels: they then add nothing."""
    g = torch.Generator().manual_seed(seed)
    silent = []
    with torch.no_grad():
        for layer in model.model.layers:
            channels = torch.randperm(128, generator=g)[:64].sort().values
            layer.mlp.down_proj.weight[:, channels] = 0.0
            silent.append(channels)
    return silent


def test_channels_that_add_nothing_score_zero_and_dropping_them_keeps_the_logits(tokenizer):
    model = _model()
    silent = _silence_channels(model)
    importance = mlp_channel_importance(model, tokenizer, ["2 + 2 = 4, and 3 + 5 = 8.", "The sea is blue."])
    for scores, channels in zip(importance, silent):
        assert torch.all(scores[channels] == 0)
        assert scores.gt(0).sum() == 64

    ids = torch.tensor([[1, 510, 2133, 314, 253, 1184, 30, 15]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    report = prune_in_memory(model, tokenizer, mlp_keep=0.5)
    assert report["intermediate_size"] == 64 and model.config.intermediate_size == 64
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    for i, kept in enumerate(report["mlp_kept_channels"]):
        assert not set(kept) & set(silent[i].tolist())
        prefix = f"model.layers.{i}.mlp."
        assert torch.equal(model.state_dict()[prefix + "gate_proj.weight"], original[prefix + "gate_proj.weight"][kept])
        assert torch.equal(model.state_dict()[prefix + "down_proj.weight"],
                           original[prefix + "down_proj.weight"][:, kept])
    assert report["parameters_after"] == report["parameters_before"] - 3 * 3 * 64 * 64


def test_prune_mlp_keep_writes_a_folder_transformers_loads(tmp_path, tokenizer, capsys):
    from transformers import AutoModelForCausalLM

    source = tmp_path / "model"
    _model().save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "narrow"
    assert main(["prune", "--model", str(source), "--mlp-keep", "0.25", "--layers", "0,2", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["intermediate_size"] == 32 and printed["kept_layers"] == [0, 2]
    written = json.loads((out / "pruning.json").read_text())
    assert [len(c) for c in written["mlp_kept_channels"]] == [32, 32]

    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    assert pruned.config.intermediate_size == 32 and pruned.config.num_hidden_layers == 2
    assert pruned.model.layers[1].mlp.up_proj.weight.shape == (32, 64)
    original = AutoModelForCausalLM.from_pretrained(source).state_dict()
    kept = written["mlp_kept_channels"][1]  # new layer 1 is old layer 2
    assert torch.equal(pruned.state_dict()["model.layers.1.mlp.up_proj.weight"],
                       original["model.layers.2.mlp.up_proj.weight"][kept])
    with torch.no_grad():
        out_ids = pruned.generate(torch.tensor([[1, 510, 2133]]), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out_ids.shape == (1, 7)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "nothing to prune"),
    ({"mlp_keep": 0.0}, r"expected the fraction of MLP channels to keep, in \(0, 1\]"),
    ({"mlp_keep": 1.5}, "in \\(0, 1\\]"),
])
def test_bad_width_requests_fail_in_one_line(tokenizer, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        prune_in_memory(_model(), tokenizer, **kwargs)
