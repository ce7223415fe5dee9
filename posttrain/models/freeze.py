"""Freezing part of a model: the input embeddings and a set of decoder layers stop training.

A frozen parameter gets ``requires_grad = False``; the engine's optimizer takes only trainable parameters
(``posttrain.engine.optimizer.build_optimizer``), so a frozen parameter has no gradient and no AdamW moments: the
optimizer state shrinks by 2 x 4 bytes per frozen fp32 parameter, the gradients by 4 more (docs/training.md).

Config (every method, the ``freeze`` section): ``freeze: {embeddings: true, layers: "0-19"}``. ``layers`` is a
comma-separated list of 0-based layer indices and inclusive ranges ("0-5", "0-3,8,10-11"); layer 0 is the one next
to the embeddings. A model with tied input and output embeddings (SmolLM2, the tiny test model) freezes its output
head with the embeddings: they are one tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from posttrain.config import option
from posttrain.errors import ConfigError


@dataclass
class FreezeSettings:
    embeddings: bool = option(False, help="freeze the input token embeddings (and the output head tied to them)")
    layers: str | None = option(None, help="decoder layers to freeze, 0-based from the embeddings: indices and "
                                           "inclusive ranges, e.g. \"0-19\" or \"0-3,8\"; None: none")

    @property
    def enabled(self) -> bool:
        return self.embeddings or bool(self.layers)


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_layer_spec(spec: str, num_layers: int) -> list[int]:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]``, checked against the model's ``num_layers``."""
    indices: set[int] = set()
    for part in str(spec).split(","):
        match = _RANGE.match(part)
        if not match:
            raise ConfigError(f"freeze.layers: {spec!r} is not a list of layer indices and ranges like \"0-19\" or "
                              "\"0-3,8\"")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if first > last or last >= num_layers:
            raise ConfigError(f"freeze.layers: {part.strip()!r} is outside the model's layers 0-{num_layers - 1}")
        indices.update(range(first, last + 1))
    return sorted(indices)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList whose length is ``config.num_hidden_layers`` (Llama's
    ``model.layers``, GPT-2's ``transformer.h``, ... under any wrapper: peft, a classifier)."""
    config = getattr(model, "config", None)
    wanted = getattr(config, "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    for stack in stacks:
        if wanted is None or len(stack) == wanted:
            return stack
    raise ConfigError(f"freeze: cannot find the decoder layers of {type(model).__name__} (a ModuleList of "
                      f"{wanted} layers)")


def freeze_parameters(model, settings: FreezeSettings) -> list[str]:
    """Set ``requires_grad = False`` on the embeddings and layers ``settings`` names; returns the frozen names."""
    frozen: set[int] = set()
    if settings.embeddings:
        frozen.update(id(p) for p in model.get_input_embeddings().parameters())
    if settings.layers:
        layers = decoder_layers(model)
        for index in parse_layer_spec(settings.layers, len(layers)):
            frozen.update(id(p) for p in layers[index].parameters())
    names = []
    for name, param in model.named_parameters():
        if id(param) in frozen:
            param.requires_grad_(False)
            names.append(name)
    return names
