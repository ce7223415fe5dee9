"""The decoder's building blocks against the Hugging Face code they replace: the same floats, not just close ones
(greedy decoding matches transformers' token for token only if every step does)."""

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm, rotate_half

from posttrain.rollout.decoders import norm_function, rotate
from posttrain.rollout.packed import fused_linear, mlp_function, single_linear


def test_rotate_is_transformers_rope_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    x, cos, sin = (torch.randn(4, 3, 6, 8, generator=generator) for _ in range(3))
    signed_sin = sin * torch.tensor([-1.0] * 4 + [1.0] * 4)
    expected = x * cos + rotate_half(x) * sin
    assert torch.equal(rotate(x, cos, signed_sin), expected)
    inplace = x.clone()
    rotate(inplace, cos, signed_sin, out=inplace)
    assert torch.equal(inplace, expected)


def test_norm_function_fuses_float32_rmsnorm_with_the_same_floats():
    norm = LlamaRMSNorm(64, eps=1e-5)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(5, 3, 64) * 3
    fused = norm_function(norm)
    assert fused is not norm
    assert torch.equal(fused(x), norm(x))
    assert torch.equal(fused(x.bfloat16()), norm(x.bfloat16()))  # other dtypes: the module itself
    layer_norm = nn.LayerNorm(64)
    assert norm_function(layer_norm) is layer_norm


def test_fused_linear_is_the_concatenation_of_its_modules():
    torch.manual_seed(0)
    layers = [nn.Linear(16, 8), nn.Linear(16, 4, bias=False), nn.Linear(16, 4)]
    x = torch.randn(3, 16)
    expected = torch.cat([layer(x) for layer in layers], dim=-1)
    with torch.no_grad():
        assert torch.allclose(fused_linear(layers, 3)(x), expected, atol=1e-6)
        assert torch.allclose(single_linear(layers[0], 3)(x), layers[0](x), atol=1e-6)
        rounded = fused_linear(layers, 3, torch.bfloat16)(x.bfloat16())
        assert rounded.dtype == torch.bfloat16 and torch.allclose(rounded.float(), expected, atol=0.05)


def test_mlp_function_is_the_llama_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2, hidden_act="silu"))
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(mlp_function(mlp, 3)(x), mlp(x), atol=1e-6)


def test_a_decoder_is_freed_without_the_garbage_collector():
    """Its packed weights are about the model's size: a reference cycle would keep them alive past the ``sample``
    call, so the next call could not reuse their memory (fresh pages cost page faults: docs/benchmarks.md)."""
    import gc
    import weakref

    from posttrain.models import build_tiny_model
    from posttrain.rollout.decoders import LlamaDecoder

    model = build_tiny_model(seed=0).eval()
    gc.disable()
    try:
        for dtype in (None, torch.bfloat16):
            decoder = weakref.ref(LlamaDecoder(model, 4, 16, dtype))
            assert decoder() is None
    finally:
        gc.enable()
