"""Streaming merges of model folders and LoRA adapters (posttrain.models.merging, `posttrain merge`)."""

import json

import pytest
import torch

from posttrain.api import merge
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model
from posttrain.models.merging import merge_one, read_merge_config

VOCAB = 256


def _perturbed(seed, scale=0.02):
    """The base model plus seeded noise: a stand-in for a fine-tuned model."""
    model = build_tiny_model(0, vocab_size=VOCAB)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("merge_inputs")
    paths = {}
    for name, model in (("base", build_tiny_model(0, vocab_size=VOCAB)), ("a", _perturbed(1)), ("b", _perturbed(2))):
        # b is sharded on disk: the reader follows the index
        model.save_pretrained(root / name, max_shard_size="100KB" if name == "b" else "5GB")
        tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def _state(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).state_dict()


CONFIGS = {
    "linear": {"method": "linear"},
    "task_arithmetic": {"method": "task_arithmetic", "parameters": {"scale": 0.8}},
    "ties": {"method": "ties", "parameters": {"density": 0.3}},
    "dare": {"method": "dare", "parameters": {"drop_rate": 0.5, "seed": 3}},
    "dare_ties": {"method": "ties", "parameters": {"drop_rate": 0.5}},
    "slerp": {"method": "slerp", "parameters": {"t": 0.3}},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_streaming_merge_equals_in_memory_merge(folders, tmp_path, name):
    data = dict(CONFIGS[name], models=[{"model": str(folders["a"]), "weight": 0.7},
                                       {"model": str(folders["b"]), "weight": 0.4}],
                base=str(folders["base"]), out=str(tmp_path / "out"), max_shard_mb=0.1)
    out = merge(data)
    assert (out / "model.safetensors.index.json").is_file()  # written shard by shard
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    card = (out / "README.md").read_text()
    assert data["method"] in card and str(folders["a"]) in card and "0.7" in card
    merged = _state(out)  # loads with plain transformers
    config = read_merge_config(data)
    states = [_state(folders["a"]), _state(folders["b"])]
    base = _state(folders["base"])
    for key, value in merged.items():
        if key == "lm_head.weight":  # tied to the embedding
            continue
        expected = merge_one(config, key, [s[key] for s in states], base[key])
        assert torch.allclose(value, expected, atol=1e-6), key


@pytest.mark.parametrize("name", list(CONFIGS))
def test_merging_identical_models_returns_them(folders, tmp_path, name):
    # identical inputs: every rule must give them back (ties/dare: the same task vector, averaged)
    parameters = dict(CONFIGS[name].get("parameters", {}), drop_rate=0.0, density=1.0, scale=1.0)
    data = dict(CONFIGS[name], parameters=parameters, models=[{"model": str(folders["a"]), "weight": 0.5}] * 2,
                base=str(folders["base"]), out=str(tmp_path / "same"))
    merged, original = _state(merge(data)), _state(folders["a"])
    for key, value in original.items():
        assert torch.allclose(merged[key], value, atol=1e-6), key


def test_output_dtype_is_written(folders, tmp_path):
    out = merge({"method": "linear", "models": [{"model": str(folders["a"])}, {"model": str(folders["base"])}],
                 "out": str(tmp_path / "bf16"), "dtype": "bfloat16"})
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor("model.norm.weight").dtype == torch.bfloat16


@pytest.mark.parametrize("change, key", [
    ({"methd": "ties"}, "methd"),
    ({"method": "soup"}, "method"),
    ({"method": "ties"}, "base"),
    ({"parameters": {"density": 2}}, "parameters.density"),
    ({"models": [{"model": "/no/such/folder"}]}, "models[0].model"),
    ({"method": "slerp"}, "models"),
    ({"models": [{"model": "A", "weigth": 1}]}, "models[0].weigth"),
    ({"into": "adapter"}, "into"),
])
def test_bad_config_names_the_key(folders, tmp_path, change, key):
    data = {"method": "linear", "models": [{"model": str(folders["a"])}, {"model": str(folders["b"])},
                                           {"model": str(folders["base"])}], "out": str(tmp_path / "x")}
    data.update(change)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        merge(data)
    assert not (tmp_path / "x").exists()


def test_cli_merge_prints_one_line_errors(folders, tmp_path, capsys):
    from posttrain.cli import main

    path = tmp_path / "merge.yaml"
    path.write_text(f"method: linear\nmodels:\n  - model: {folders['a']}\n  - model: {folders['b']}\n"
                    f"out: {tmp_path / 'cli'}\n")
    assert main(["merge", str(path), "parameters.normalize=true"]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    assert main(["merge", str(path), "parameters.t=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "parameters.t" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def adapters(folders, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    paths = []
    for seed, r in ((1, 4), (2, 8)):
        model = build_tiny_model(0, vocab_size=VOCAB)
        config = LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "up_proj"] if seed == 1 else ["q_proj"])
        peft_model = get_peft_model(model, config)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:  # B = 0 at init: give the adapters an update to merge
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for adapter_config in peft_model.peft_config.values():
            adapter_config.base_model_name_or_path = str(folders["base"])
        peft_model.save_pretrained(root / f"lora{seed}")
        paths.append(root / f"lora{seed}")
    return paths


def _peft_merged(folder):
    from peft import PeftModel

    model = PeftModel.from_pretrained(build_tiny_model(0, vocab_size=VOCAB), str(folder))
    return model.merge_and_unload().state_dict()


def test_lora_linear_into_base_equals_peft_merge(adapters, tmp_path):
    out = merge({"method": "linear", "models": [{"model": str(adapters[0]), "weight": 1.0},
                                                {"model": str(adapters[1]), "weight": 3.0}],
                 "out": str(tmp_path / "full")})
    merged = _state(out)
    first, second = _peft_merged(adapters[0]), _peft_merged(adapters[1])
    for key, value in merged.items():
        assert torch.allclose(value, (first[key] + 3 * second[key]) / 4, atol=1e-6), key


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_lora_into_one_adapter_equals_into_base(adapters, folders, tmp_path, method):
    models = [{"model": str(adapters[0]), "weight": 0.6}, {"model": str(adapters[1]), "weight": 0.9}]
    common = {"method": method, "models": models, "parameters": {"density": 0.5}}
    full = _state(merge(dict(common, out=str(tmp_path / "full"))))
    # rank 64 >= the updates' rank: the SVD of ties' merged update is exact
    adapter = merge(dict(common, into="adapter", rank=64, out=str(tmp_path / "adapter")))
    assert (adapter / "adapter_config.json").is_file()
    from_adapter = _peft_merged(adapter)
    for key, value in full.items():
        assert torch.allclose(from_adapter[key], value, atol=1e-5), key


def test_shipped_merge_preset_validates():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[2] / "configs" / "merge").glob("*.yaml")):
        config = read_merge_config(path)
        assert config.models and config.out, path
