"""GGUF export round trip: write with the gguf package, read back with transformers (`gguf_file=`)."""

import pytest
import torch

pytest.importorskip("gguf", reason="gguf is not installed: pip install 'posttrain[dev]'")

from posttrain.errors import ConfigError  # noqa: E402
from posttrain.models import build_tiny_model  # noqa: E402
from posttrain.models.gguf_export import export_gguf  # noqa: E402

TEXTS = ["Hello world! 12345 tokens", "<|im_start|>user\nWhat is 7*8?<|im_end|>\n", "  spaces\tand\ttabs ünïcødé"]


def _small_tokenizer(chat_template):
    """A real byte-level BPE of 308 tokens (GPT-2's layout, as SmolLM2's): reading 49k tokens and merges back from
    GGUF takes transformers ~10 s, so the logit checks use this one; the shipped tokenizer gets its own test."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(["What is 7 times 8? The answer is 56. Hello world, user assistant system."] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def source(tmp_path_factory, tokenizer):
    """A tiny llama with 320 embedding rows for a 308-token tokenizer: the export pads the vocabulary."""
    folder = tmp_path_factory.mktemp("gguf_source") / "model"
    small = _small_tokenizer(tokenizer.chat_template)
    model = build_tiny_model(0, vocab_size=320)
    model.save_pretrained(folder)
    small.save_pretrained(folder)
    return folder, model, small


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("fmt, tolerance", [("f16", 1e-2), ("q8_0", 5e-2)])
def test_round_trip_logits_and_tokenizer(source, tmp_path, fmt, tolerance):
    folder, model, tokenizer = source
    path = export_gguf(folder, tmp_path / f"model-{fmt}.gguf", fmt)
    loaded, loaded_tokenizer = _load(path)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(ids).logits, loaded(ids).logits
    relative = ((actual - expected).abs().max() / expected.abs().max()).item()
    print(f"gguf {fmt}: max |logits - source| / max |source| = {relative:.2e}, file {path.stat().st_size} bytes")
    assert relative < tolerance
    if fmt == "f16":  # the q/k permutation and tensor names are right only if f16 is this close
        assert relative < 1e-3
    for text in TEXTS:
        assert loaded_tokenizer(text).input_ids == tokenizer(text).input_ids, text
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert (loaded_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id


def test_shipped_tokenizer_round_trips(tokenizer, tmp_path):
    """SmolLM2's own tokenizer (49152 tokens): tokens, merges, special ids and chat template survive the file."""
    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    build_tiny_model(0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = export_gguf(folder, tmp_path / "model.gguf", "q8_0")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        assert loaded(text).input_ids == tokenizer(text).input_ids, text
    assert loaded.chat_template == tokenizer.chat_template
    assert (loaded.bos_token_id, loaded.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)


def test_metadata_and_types(source, tmp_path):
    from gguf import GGUFReader

    from posttrain.cli import main

    path = tmp_path / "m.gguf"
    assert main(["export", "--model", str(source[0]), "--gguf", "q8_0", "--out", str(path)]) == 0
    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied to token_embd, as transformers reads it back
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 320  # padded to the embedding's rows


def test_gguf_cannot_write_k_quants():
    """Why --gguf q4_k is refused: gguf's Python quantizer has no Q4_K (it only dequantizes). When a gguf release
    adds one, this fails: add q4_k to FORMATS with a round-trip test."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    with pytest.raises(NotImplementedError):
        quants.quantize(np.zeros((1, 256), dtype=np.float32), GGMLQuantizationType.Q4_K)
    assert quants.dequantize(np.zeros((1, 144), dtype=np.uint8), GGMLQuantizationType.Q4_K).shape == (1, 256)


def test_bad_inputs_are_one_line_errors(source, tmp_path):
    with pytest.raises(ConfigError, match="q4_k: the gguf package .* not write them.*llama-quantize"):
        export_gguf(source[0], tmp_path / "x.gguf", "q4_k")
    with pytest.raises(ConfigError, match="no such folder"):
        export_gguf(tmp_path / "missing", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
