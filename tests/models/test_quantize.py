"""Weight quantization with torchao (posttrain.models.quantize, `posttrain quantize`); runs when torchao is installed
(pip install 'posttrain[quantize]')."""

import copy

import pytest
import torch

pytest.importorskip("torchao", reason="torchao is not installed: pip install 'posttrain[quantize]'")

from posttrain.errors import ConfigError  # noqa: E402
from posttrain.models import build_tiny_model, load_model  # noqa: E402
from posttrain.models.quantize import (  # noqa: E402
    embedding_rows,
    gather_rows_before_dequantizing,
    quantize_model,
)

VOCAB = 256
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def source(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("quantize") / "model"
    model = build_tiny_model(0, vocab_size=VOCAB).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def _groups(weight, group_size):
    """``(rows, groups, group_size)`` view of a ``(rows, inputs)`` weight."""
    return weight.reshape(weight.shape[0], -1, group_size or weight.shape[1])


# format, group size, levels of the grid (error bound max|w| / levels per group), logit tolerance (relative)
CASES = [("int8", None, 254, 2e-2), ("int8", 32, 254, 2e-2), ("int8-dynamic", None, 254, 3e-2), ("int4", 32, 15, 0.25)]


@pytest.mark.parametrize("fmt, group_size, levels, tolerance", CASES)
def test_quantize_dequantize_error_bound_and_reload(source, tmp_path, fmt, group_size, levels, tolerance):
    folder, model = source
    out = quantize_model(folder, tmp_path / fmt, fmt, group_size)
    quantized, tokenizer = load_model(str(out), device="cpu")  # loads back in posttrain like any folder
    dense = dict(model.named_parameters())
    embedding = quantized.get_input_embeddings().weight
    assert type(embedding.data).__module__.startswith("torchao.")  # the embedding is quantized too ...
    assert quantized.get_output_embeddings().weight is embedding  # ... and the tied head is that same tensor
    checked = 0
    for name, module in quantized.named_modules():
        if not name.endswith(LINEARS + ("embed_tokens",)):
            continue
        checked += 1
        weight = dense[f"{name}.weight"].detach()
        error = _groups((module.weight.dequantize().float() - weight).abs(), group_size)
        # a symmetric grid of `levels` steps over [-max|w|, max|w|]: rounding costs at most half a step
        bound = _groups(weight.abs(), group_size).amax(-1, keepdim=True) / levels
        assert (error <= bound * 1.001 + 1e-8).all(), name
    assert checked == 1 + 2 * len(LINEARS)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(ids).logits, quantized(ids).logits
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < tolerance
    assert "torchao" in (out / "README.md").read_text() and (out / "tokenizer.json").is_file()


def _stored(folder):
    from posttrain.models.tensor_files import TensorReader

    with TensorReader(folder) as reader:
        return {name: reader.get(name) for name in reader.names()}


def _nbytes(tensors, *parts):
    return sum(t.numel() * t.element_size() for n, t in tensors.items() if any(p in n for p in parts))


def test_int8_weights_take_a_quarter_of_the_bytes(source, tmp_path):
    """int8 stores each weight in a quarter of its fp32 bytes plus a scale and a zero point per row; the tied head
    is stored once (as the embedding). With --keep-embeddings the embedding stays fp32 and the file is larger."""
    folder, model = source
    dense = _stored(folder)
    stored = _stored(quantize_model(folder, tmp_path / "int8", "int8"))
    assert not any(name.startswith("lm_head") for name in stored)
    for part in ("_proj", "embed_tokens"):  # int8 values + one float32 scale and one int8 zero point per row
        assert _nbytes(stored, part) < 0.3 * _nbytes(dense, part), part
    linear_only = _stored(quantize_model(folder, tmp_path / "linear", "int8", embeddings=False))
    assert _nbytes(linear_only, "embed_tokens") == _nbytes(dense, "embed_tokens")  # float32, as before
    total = {name: _nbytes(tensors, "") for name, tensors in (("fp32", dense), ("int8", stored),
                                                                ("linear", linear_only))}
    assert total["int8"] < 0.3 * total["fp32"]
    # the only difference: the embedding's bytes (a duplicated head would show here)
    assert total["linear"] - total["int8"] == _nbytes(dense, "embed_tokens") - _nbytes(stored, "embed_tokens")


def test_quantized_model_scores_and_keep_embeddings(source, tmp_path):
    """posttrain's chunked log-probs (perplexity, KL, training losses) run on a model whose head is quantized, and
    match the fp32 model's within int8 error; --keep-embeddings leaves embedding and head float32."""
    from posttrain.cli import main
    from posttrain.models.forward import token_logps

    folder, model = source
    quantized, _ = load_model(str(quantize_model(folder, tmp_path / "int8", "int8")), device="cpu")
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    with torch.no_grad():
        expected, actual = token_logps(model, batch)[0].logps, token_logps(quantized, batch)[0].logps
    assert (actual - expected).abs().max() < 0.05 and not torch.equal(actual, expected)
    assert main(["quantize", "--model", str(folder), "--keep-embeddings", "--out", str(tmp_path / "keep")]) == 0
    kept, _ = load_model(str(tmp_path / "keep"), device="cpu")
    assert type(kept.get_input_embeddings().weight.data) is torch.Tensor
    assert type(kept.model.layers[0].mlp.up_proj.weight.data).__module__.startswith("torchao.")


def test_bad_format_and_group_size(source, tmp_path):
    with pytest.raises(ConfigError, match="--format"):
        quantize_model(source[0], tmp_path / "x", "int3")
    with pytest.raises(ConfigError, match="--group-size"):
        quantize_model(source[0], tmp_path / "x", "int8-dynamic", 32)


def test_a_quantized_model_generates_through_the_generic_decoder(source, tmp_path, tokenizer):
    """The rollout engine's Llama fast path packs the projections' weights into joined matrices, which torchao's
    quantized tensors do not support: a quantized model takes the generic path, and `auto` picks it."""
    from posttrain.rollout import SamplingParams, sample
    from posttrain.rollout.decoders import supports_llama_path

    folder, model = source
    quantized, _ = load_model(str(quantize_model(str(folder), tmp_path / "q", "int8")), device="cpu")
    assert not supports_llama_path(quantized) and supports_llama_path(model)
    prompts = [[5, 17, 42, 9], [8, 3]]  # token ids inside the tiny vocabulary
    params = SamplingParams(max_new_tokens=5, temperature=0.0, eos_token_ids=())
    auto, generic = (sample(quantized, tokenizer, prompts, params, backend=b) for b in ("auto", "hf"))
    assert torch.equal(auto.completion_ids, generic.completion_ids) and int(auto.completion_mask.sum()) == 10


def test_a_quantized_teacher_distills_like_its_float_original(source, tmp_path, tokenizer):
    """The distillation loss reads the teacher's output head in chunks (a transposed matmul torchao's tensors lack):
    an int8 teacher gives nearly the float teacher's loss instead of failing."""
    from posttrain.data import Example
    from posttrain.data.batching import collate
    from posttrain.trainers.distill import DistillConfig, DistillMethod

    folder, teacher = source
    quantized, _ = load_model(str(quantize_model(folder, tmp_path / "int8", "int8")), device="cpu")
    student = build_tiny_model(1, vocab_size=VOCAB)
    ids = [[5, 17, 40, 2, 99, 7], [8, 3, 250, 11]]
    batch = collate([Example(row, [0, 0] + [1] * (len(row) - 2), "") for row in ids], tokenizer.pad_token_id)
    config = DistillConfig(teacher="unused")
    full = DistillMethod(teacher.requires_grad_(False), config).loss(student, batch).loss_sum
    int8 = DistillMethod(quantized.requires_grad_(False), config).loss(student, batch).loss_sum
    assert int8.item() == pytest.approx(full.item(), rel=2e-2) and int8.item() != full.item()


@pytest.mark.parametrize("fmt, group_size", [("int8", None), ("int8", 32), ("int8-dynamic", None), ("int4", 32)])
def test_embedding_lookup_gathers_rows_before_dequantizing(source, tmp_path, fmt, group_size):
    """The quantized embedding's lookup dequantizes only the looked-up rows, and they equal the whole dequantized
    table's rows bit for bit; the model's logits are those of torchao's own lookup; a deep copy keeps its own table."""
    folder, _ = source
    quantized, _ = load_model(str(quantize_model(folder, tmp_path / fmt, fmt, group_size)), device="cpu")
    embedding = quantized.get_input_embeddings()
    ids = torch.tensor([[3, 250, 3, 0], [17, 17, 99, 1]])
    table = embedding.weight.dequantize()
    shapes, dequantize = [], type(embedding.weight.data).dequantize

    def recording(self, *args, **kwargs):
        shapes.append(tuple(self.shape))
        return dequantize(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(embedding.weight.data), "dequantize", recording)
        rows = embedding(ids)
    assert shapes == [(8, table.shape[1])]  # eight rows, never the 256-row table
    assert rows.shape == (2, 4, table.shape[1]) and torch.equal(rows, table[ids])
    assert torch.equal(embedding_rows(embedding.weight, ids[0]), table[ids[0]])
    with torch.no_grad():
        ours = quantized(ids).logits
        del embedding.forward  # back to nn.Embedding's forward: torchao dequantizes the table
        assert torch.equal(ours, quantized(ids).logits)
    gather_rows_before_dequantizing(quantized)
    copied = copy.deepcopy(quantized)
    assert copied.get_input_embeddings().forward.__self__ is copied.get_input_embeddings()

    class ScaledEmbedding(torch.nn.Embedding):  # as Gemma's: its own forward, which the patch must not replace
        def forward(self, ids):
            return super().forward(ids) * 8.0

    del embedding.forward
    embedding.__class__ = ScaledEmbedding
    gather_rows_before_dequantizing(quantized)
    assert "forward" not in vars(embedding) and torch.equal(embedding(ids), table[ids] * 8.0)
