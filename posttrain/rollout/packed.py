"""Linear layers for decoding on CPU: weights prepacked once into oneDNN's blocked layout, sibling layers fused.

Decoding multiplies a few rows (the active completions) by every weight matrix of the model at each step. For such
thin products oneDNN's GEMM on a weight prepacked into its blocked layout is faster than ``F.linear``, for every
layer of the model (docs/benchmarks.md, rollout engine). Sibling projections that read the same input (q/k/v,
gate/up) are packed as one matrix, so each costs a single call.

The packed copy is a second copy of the weights (about the model's size in memory, half in bfloat16), made when a
decoder is built (once per ``sample`` call, so weights updated by training are always the ones used) and freed with
it. ``dtype`` is the dtype the products run in: the weights' own, or bfloat16 for a float32 model (the copy is
rounded; its products are faster on a CPU with AVX512-BF16, docs/benchmarks.md).
Anything that is not a plain ``nn.Linear`` (a LoRA-wrapped layer, a quantized one) runs through the module itself,
its input cast to the module's dtype and its output to ``dtype``, so adapters and ``adapters_disabled`` keep
working.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _plain(modules) -> bool:
    return all(type(m) is nn.Linear for m in modules)


def _packable(modules) -> bool:
    return (
        _plain(modules)
        and all(m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 for m in modules)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _joined(modules, dtype: torch.dtype):
    """``cat(weights)`` and ``cat(biases)`` (None when no module has a bias), in ``dtype``."""
    weight = torch.cat([m.weight.detach() for m in modules]) if len(modules) > 1 else modules[0].weight.detach()
    biases = [m.bias for m in modules]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b.detach() if b is not None else m.weight.new_zeros(m.out_features) for m, b in zip(modules, biases)])
    return weight.to(dtype), None if bias is None else bias.to(dtype)


def _through_modules(modules, dtype: torch.dtype | None):
    """``x -> cat(module(x) for module in modules)``, the input cast to the modules' dtype, the output to ``dtype``."""
    module_dtype = next(modules[0].parameters()).dtype

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x if dtype in (None, module_dtype) else x.to(module_dtype)
        out = modules[0](x) if len(modules) == 1 else torch.cat([m(x) for m in modules], dim=-1)
        return out if dtype in (None, module_dtype) else out.to(dtype)

    return run


def _packed(modules, rows: int, dtype: torch.dtype):
    """oneDNN-packed ``cat(weights)`` and ``cat(biases)`` in ``dtype``; None when this torch build cannot pack it."""
    weight, bias = _joined(modules, dtype)
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows), bias
    except RuntimeError:
        return None


def fused_linear(modules: list[nn.Module], rows: int, dtype: torch.dtype | None = None):
    """A function ``x -> cat(module(x) for module in modules, dim=-1)`` for modules that read the same input (the
    caller splits or views the joined output), computing in ``dtype`` (None: the weights' dtype); ``x`` must be in
    ``dtype``.

    ``rows``: the typical number of input rows (a layout hint for the packing; any number works).
    """
    if not _plain(modules):
        return _through_modules(modules, dtype)
    dtype = dtype or modules[0].weight.dtype
    packed = _packed(modules, rows, dtype) if _packable(modules) else None
    if packed is not None:
        weight, bias = packed
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if modules[0].weight.dtype == dtype:  # the module path is always correct
        return _through_modules(modules, dtype)
    weight, bias = _joined(modules, dtype)  # plain layers in another dtype: one rounded copy
    return lambda x: F.linear(x, weight, bias)


def single_linear(module: nn.Module, rows: int, dtype: torch.dtype | None = None):
    """``x -> module(x)``, prepacked when possible."""
    return fused_linear([module], rows, dtype)


def mlp_function(mlp: nn.Module, rows: int, dtype: torch.dtype | None = None):
    """A Llama MLP, ``down(act(gate(x)) * up(x))``, with gate and up as one matrix; the module itself when its layers
    are not plain linear layers."""
    parts = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not hasattr(mlp, "act_fn") or not _plain(parts):
        return _through_modules([mlp], dtype)
    gate_up, down = fused_linear(parts[:2], rows, dtype), single_linear(parts[2], rows, dtype)

    def run(x: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up(x).chunk(2, dim=-1)
        return down(mlp.act_fn(gate) * up)

    return run
