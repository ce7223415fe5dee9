"""GGUF export round trip: write with the gguf package, read back with transformers (`gguf_file=`)."""

import numpy as np
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
    """Why posttrain writes Q4_K itself (gguf_kquants.py) and refuses the other k-quants: gguf's Python quantizer
    has no Q4_K (it only dequantizes). When a gguf release adds one, this fails: use it, and add the others."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    with pytest.raises(NotImplementedError):
        quants.quantize(np.zeros((1, 256), dtype=np.float32), GGMLQuantizationType.Q4_K)
    assert quants.dequantize(np.zeros((1, 144), dtype=np.uint8), GGMLQuantizationType.Q4_K).shape == (1, 256)


def test_bad_inputs_are_one_line_errors(source, tmp_path):
    with pytest.raises(ConfigError, match="q5_k: the gguf package .* not write them.*llama-quantize"):
        export_gguf(source[0], tmp_path / "x.gguf", "q5_k")
    with pytest.raises(ConfigError, match="no such folder"):
        export_gguf(tmp_path / "missing", tmp_path / "x.gguf")
    broken = tmp_path / "broken"
    model = build_tiny_model(0, vocab_size=320)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(broken)
    source[2].save_pretrained(broken)
    with pytest.raises(ConfigError, match="layers.1.mlp.up_proj.weight' has NaN or infinite values"):
        export_gguf(broken, tmp_path / "x.gguf", "q8_0")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".tmp-*"))


def _on_q4_k_grid(blocks: int, seed: int) -> np.ndarray:
    """Values a Q4_K block represents exactly: float16 d and dmin, 6-bit codes whose largest is 63 in every
    super-block (so ``d = max(scale) / 63`` is d again), and 4-bit values reaching 0 and 15 in every sub-block."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(1e-4, 1e-2, (blocks, 1, 1)).astype(np.float16).astype(np.float32)
    dmin = rng.uniform(1e-4, 1e-2, (blocks, 1, 1)).astype(np.float16).astype(np.float32)
    sc, m = rng.integers(1, 64, (2, blocks, 8, 1))
    sc[:, 0], m[:, 3] = 63, 63
    q = rng.integers(0, 16, (blocks, 8, 32))
    q[..., 0], q[..., 1] = 0, 15
    return (d * sc * q - dmin * m).astype(np.float32).reshape(blocks // 2, 512)


def test_q4_k_blocks_read_back_by_gguf():
    """Our Q4_K blocks through gguf's own dequantizer: values on a Q4_K grid come back exactly (the packing of
    scales, minimums and nibbles is the format's); random weights come back closer than Q4_0's and Q4_1's (at
    4.5 bits per value against their 4.5 and 5), and a zero or constant row is kept (to float16's precision)."""
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    from posttrain.models.gguf_kquants import quantize_q4_k

    exact = _on_q4_k_grid(8, 0)
    blocks = quantize_q4_k(exact)
    assert blocks.shape == (4, 2 * 144) and blocks.dtype == np.uint8
    assert np.abs(quants.dequantize(blocks, T.Q4_K) - exact).max() <= 1e-6 * np.abs(exact).max()
    weights = np.random.default_rng(1).standard_normal((64, 512)).astype(np.float32) * 0.02

    def rms(fmt, data):
        return np.sqrt(((quants.dequantize(data, fmt) - weights) ** 2).mean()) / np.sqrt((weights ** 2).mean())

    ours = rms(T.Q4_K, quantize_q4_k(weights))
    assert ours < rms(T.Q4_1, quants.quantize(weights, T.Q4_1)) < rms(T.Q4_0, quants.quantize(weights, T.Q4_0))
    constant = np.stack([np.zeros(256), np.full(256, 0.5), -np.linspace(0, 1, 256)]).astype(np.float32)
    error = np.abs(quants.dequantize(quantize_q4_k(constant), T.Q4_K) - constant).max(-1)
    assert error[0] == 0 and error[1] < 0.5 * 1e-3 and error[2] < 1 / 15 / 2  # zeros; d's float16; half a step
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(weights[:, :320])
    # a flat (here all-zero) sub-block must not take its super-block's shared scale: the others keep Q4_K's error
    small = weights[:, :256] / 10
    small[:, 64:96] = 0
    back = quants.dequantize(quantize_q4_k(small), T.Q4_K)
    assert (back[:, 64:96] == 0).all()
    assert np.sqrt(((back - small) ** 2).mean() / (small ** 2).mean()) < 0.1


def test_q4_k_export_round_trip(source, tmp_path):
    """--gguf q4_k on a llama whose rows are 256 and 512 wide: Q4_K tensors, read back by transformers with logits
    near the source's; the tiny source's 64-wide rows fall back as llama.cpp's quantizer does: Q5_0, and Q8_0 for
    the embedding that is also the output head."""
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    folder, _, tokenizer = source
    wide = tmp_path / "wide"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=2)).eval()
    model.save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    path = export_gguf(wide, tmp_path / "wide-q4_k.gguf", "q4_k")
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == types["token_embd.weight"] == "Q4_K"
    loaded, _ = _load(path)
    ids = torch.randint(0, 308, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(ids).logits, loaded(ids).logits
    relative = ((actual - expected).abs().max() / expected.abs().max()).item()
    print(f"gguf q4_k: max |logits - source| / max |source| = {relative:.2e}, file {path.stat().st_size} bytes")
    assert 0 < relative < 0.25
    narrow = export_gguf(folder, tmp_path / "narrow-q4_k.gguf", "q4_k")
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(narrow)).tensors}
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["token_embd.weight"] == "Q8_0"  # the tied head: Q8_0


def test_llama_cpp_greedy_generation_matches_ours(source, tmp_path):
    """llama.cpp itself reads the exported file and decodes greedily what transformers decodes from the source.
    Runs where llama-cpp-python is installed; PyPI has it as source only (a C++ build), so not in CI here."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (source only on PyPI)")
    folder, model, tokenizer = source
    path = export_gguf(folder, tmp_path / "model-f32.gguf", "f32")
    prompt = tokenizer("What is 7 times 8? The answer is").input_ids
    ids, ours = torch.tensor([prompt]), []
    with torch.no_grad():
        for _ in range(8):  # plain argmax decoding, no end-of-sequence stop (as llama.cpp's generate)
            ours.append(int(model(ids).logits[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[ours[-1]]])], dim=1)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    theirs = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        theirs.append(int(token))
        if len(theirs) == len(ours):
            break
    assert theirs == ours
