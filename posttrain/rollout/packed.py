"""Linear layers for decoding on CPU: weights prepacked once into oneDNN's blocked layout, sibling layers fused.

Decoding multiplies a few rows (the active completions) by every weight matrix of the model at each step. For such
thin products oneDNN's GEMM on a weight prepacked into its blocked layout beat ``F.linear`` on the 2-core benchmark
machine (16 rows, SmolLM2 shapes, one thread): 1.2x to 1.7x for the MLP, 1.7x for q/o, 3.5x for k/v and 2.3x for the
49152-row output head. Sibling projections that read the same input
(q/k/v, gate/up) are packed as one matrix, so each costs a single call.

The packed copy is a second copy of the weights (about the model's size in memory), made when a decoder is built (once
per ``sample`` call, so weights updated by training are always the ones used) and freed with it. Anything that is not a
plain ``nn.Linear`` (a LoRA-wrapped layer, a quantized one) and any non-CPU or non-float32 weight runs through the
module itself, so adapters and ``adapters_disabled`` keep working.
"""

from __future__ import annotations

import torch
from torch import nn


def _packable(modules) -> bool:
    return (
        all(type(m) is nn.Linear for m in modules)
        and all(m.weight.device.type == "cpu" and m.weight.dtype == torch.float32 for m in modules)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _pack(modules, rows: int):
    """oneDNN-packed ``cat(weights)`` and ``cat(biases)`` (None when no module has a bias)."""
    weight = torch.cat([m.weight.detach() for m in modules]) if len(modules) > 1 else modules[0].weight.detach()
    biases = [m.bias for m in modules]
    bias = None if all(b is None for b in biases) else torch.cat(
        [b.detach() if b is not None else m.weight.new_zeros(m.out_features) for m, b in zip(modules, biases)])
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows), bias


def fused_linear(modules: list[nn.Module], rows: int):
    """A function ``x -> tuple of each module's output`` for modules that read the same input.

    ``rows``: the typical number of input rows (a layout hint for the packing; any number works).
    """
    if not _packable(modules):
        return lambda x: tuple(m(x) for m in modules)
    try:
        weight, bias = _pack(modules, rows)
    except RuntimeError:  # a torch build whose oneDNN cannot pack this: the module path is always correct
        return lambda x: tuple(m(x) for m in modules)
    sizes = [m.out_features for m in modules]

    def run(x: torch.Tensor):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "").split(sizes, dim=-1)

    return run


def single_linear(module: nn.Module, rows: int):
    """``x -> module(x)``, prepacked when possible."""
    run = fused_linear([module], rows)
    return lambda x: run(x)[0]


def mlp_function(mlp: nn.Module, rows: int):
    """A Llama MLP, ``down(act(gate(x)) * up(x))``, with gate and up as one packed matrix; the module itself when its
    layers are not plain linear layers."""
    parts = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not hasattr(mlp, "act_fn") or not _packable(parts):
        return mlp
    gate_up, down = fused_linear(parts[:2], rows), single_linear(parts[2], rows)

    def run(x: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up(x)
        return down(mlp.act_fn(gate) * up)

    return run
