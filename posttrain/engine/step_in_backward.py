"""AdamW stepped one parameter at a time, inside backward, as soon as that parameter's gradient is ready.

A normal step holds every parameter's gradient at once (backward fills them all, then the optimizer reads them):
for full fine-tuning in fp32 that is one more copy of the model, 0.54 GB for SmolLM2-135M. Stepping each parameter
from a hook the moment autograd has accumulated its gradient, then freeing that gradient, holds only the few
gradients in flight. This is torchtune's ``optimizer_in_bwd`` (the idea is LOMO's, Lv et al. 2023, "Full Parameter
Fine-tuning for Large Language Models with Limited Resources"); the update is the same AdamW update, parameter by
parameter, with the same state (moments, step counts) and the same checkpoint format as the normal path.

What it gives up, by construction:

- clipping by the global gradient norm: that norm needs every gradient before the first update (the norm is still
  computed, from each gradient before its step, and logged);
- gradient accumulation: every backward would update the weights;
- a step that a non-finite gradient skips as a whole: parameters stepped before the bad one are already updated, so
  only the parameters whose own gradient is non-finite keep their weights (counted and logged).

A hook fires once per backward, after every backward function with an edge to the parameter has run, including
ours that add a gradient straight into ``.grad`` (the input embedding and the output head,
``posttrain.models.forward``); a parameter whose gradient reached ``.grad`` without autograd's accumulation running
(all of its backward functions added in place) is stepped after backward returns.
"""

from __future__ import annotations

import math

import torch


class StepInBackward:
    """Steps ``optimizer`` (an AdamW) from backward hooks on its parameters.

    Use: ``attach()`` before training; per optimizer step ``start()``, one ``loss.backward()``, then ``finish()``,
    which steps what no hook saw and returns ``(grad_norm, finite)``; ``detach()`` at the end.

    Each parameter is stepped by a one-parameter AdamW of its own that shares the main optimizer's state for that
    parameter and copies its group's hyperparameters (the LR schedule updates the main optimizer's groups), so
    schedulers and checkpoints see one ordinary optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        # by index: loading a checkpoint replaces the optimizer's group dicts
        self.group_index: dict[int, int] = {
            id(param): index for index, group in enumerate(optimizer.param_groups) for param in group["params"]}
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.single: dict[int, torch.optim.Optimizer] = {}
        self.handles: list = []
        self.start()

    def attach(self) -> None:
        self.handles = [p.register_post_accumulate_grad_hook(self._step_one) for p in self.params]

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def start(self) -> None:
        self.squares: list[float] = []  # each stepped gradient's squared norm, for the logged total norm
        self.nonfinite = 0

    def finish(self) -> tuple[float, bool]:
        """Step what backward left in ``.grad`` without a hook; the step's gradient norm and whether every gradient
        was finite."""
        for param in self.params:
            if param.grad is not None:
                self._step_one(param)
        self.optimizer.step()  # no gradient is left, so this updates nothing; the LR scheduler counts it as the step
        grad_norm = math.sqrt(sum(self.squares))
        return grad_norm, self.nonfinite == 0

    def _step_one(self, param: torch.nn.Parameter) -> None:
        square = float(torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float32)) ** 2  # no temporary
        self.squares.append(square)
        if math.isfinite(square):
            single = self._single(param)
            single.state[param] = self.optimizer.state[param]  # the main optimizer's moments and step count
            single.step()
        else:
            self.nonfinite += 1
        param.grad = None  # the point of it all: this gradient's memory is free for the rest of backward

    def _single(self, param: torch.nn.Parameter) -> torch.optim.Optimizer:
        group = self.optimizer.param_groups[self.group_index[id(param)]]
        options = {k: v for k, v in group.items() if k != "params"}  # the current lr, set by the schedule
        single = self.single.get(id(param))
        if single is None:
            single = type(self.optimizer)([{"params": [param], **options}], **_constructor_flags(self.optimizer))
            self.single[id(param)] = single
        single.param_groups[0].update(options)
        return single


def _constructor_flags(optimizer: torch.optim.Optimizer) -> dict:
    """The implementation choice (fused / foreach) of ``optimizer``, for its one-parameter copies."""
    defaults = optimizer.defaults
    return {key: defaults[key] for key in ("fused", "foreach") if defaults.get(key) is not None}
