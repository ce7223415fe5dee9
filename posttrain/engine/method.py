"""The contract between the engine and a training method.

The engine knows nothing about any method, and no method holds the engine. A method is a ``Method`` that fills in
the hooks it needs; every hook is named here, typed and defaulted. One optimizer step, as the engine runs it:

    batches = [method.collate(examples, pad_token_id) for each micro-batch]
    method.prepare_step(model, batches, step)          # e.g. rollouts, KTO's reference point over the whole step
    n = sum(method.count(b) for b in batches)          # the items the loss averages over (tokens, pairs, ...)
    for b in batches: (method.loss(model, b).loss_sum / n).backward()
    metrics += method.step_metrics()                   # per-step scalars (generation time, clip fractions)
    clip, optimizer.step(), scheduler.step()
    method.after_update(step + 1)                      # e.g. PPO's adaptive KL and its per-rollout log line

Because the loss is summed per item and divided by the item count of the whole step, gradient accumulation and
batch splitting do not change it. ``state_dict`` / ``load_state_dict`` carry whatever the method needs to resume
exactly (baselines, KL coefficients, counters); ``outputs`` names the files it writes into ``output_dir``, which
the engine clears with the run and cuts back to the checkpoint's step on resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from posttrain.data.batching import collate


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # summed over the batch's items; the engine divides by the step's item count
    metrics: dict[str, float] = field(default_factory=dict)  # sums over the same items


class Method:
    """A training method: override ``count`` and ``loss``, and any other hook whose default does not fit."""

    #: files (or folders) in output_dir the method writes, e.g. ("samples.jsonl",). JSONL files whose lines carry a
    #: "step" lose the lines after the checkpoint a run resumes from.
    outputs: tuple[str, ...] = ()
    #: whether the method runs data-parallel under torchrun (docs/distributed.md): its statistics over a step batch
    #: are gathered over processes (``posttrain.engine.distributed``), or it keeps none; False: the engine refuses to
    #: run it in more than one process
    data_parallel: bool = True
    #: whether the method is tested under ``distributed.strategy: fsdp`` (posttrain.engine.fsdp): all its forward
    #: passes of the policy go through ``as_root_forward`` (``token_logps``) or the model's own forward, the same
    #: number on every rank
    fsdp: bool = False

    def collate(self, examples: list, pad_token_id: int) -> dict[str, torch.Tensor]:
        """How the method's examples become a batch (padded token rows by default)."""
        return collate(examples, pad_token_id)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """The number of items ``loss`` sums over in ``batch``: loss tokens, pairs, sequences."""
        raise NotImplementedError

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        """The loss summed over the batch's items, and metric sums over the same items."""
        raise NotImplementedError

    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]], step: int) -> None:
        """Before the forward passes of optimizer step ``step + 1`` (``step`` steps are done), with all its
        micro-batches: fill in what is estimated over the whole step batch (rollouts, KTO's KL reference point), so
        that accumulation does not change it. Also called on each evaluation batch."""

    def step_metrics(self) -> dict[str, float]:
        """Per-step scalars logged beside the loss (averaged over the logging window like it)."""
        return {}

    def after_update(self, step: int) -> None:
        """After optimizer step ``step`` (1-based), whether it updated the weights or was skipped."""

    def evaluate(self, model, step: int) -> dict[str, float] | None:
        """The method's own held-out evaluation at ``step`` (keys ``eval_*``); None: the engine's, the loss and metrics
        of ``loss`` averaged over the eval examples."""
        return None

    def learning_rates(self, model) -> dict[int, float]:
        """``{id(parameter): learning rate}`` for parameters that do not train at the base rate (PPO's critic)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The state a resumed run needs to continue exactly, saved in every checkpoint: JSON values, and tensors
        (nested in dicts and lists; stored in safetensors, loaded back on the CPU)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        """Restore ``state_dict()`` as saved at checkpoint ``step``."""
