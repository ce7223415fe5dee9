"""Training a mixture of experts (e.g. a model from ``posttrain upcycle``): the router losses beside the task loss.

Our forward (``posttrain.models.forward``) runs the decoder and the output head separately, so the model's own
``router_logits`` / ``aux_loss`` outputs never appear. ``RouterLogits`` catches each layer's router logits with a
forward hook on its router (``*.mlp.gate``, which returns the logits first, as transformers' Mixtral/Qwen-MoE do)
while that forward runs, and ``RouterLosses`` turns them into

    L_aux = router_aux_loss_coef * mean_l L_balance(l) + router_z_loss_coef * mean_l L_z(l)

over the real (non-pad) tokens of the whole optimizer step (``posttrain.math.moe``). The step's loss is summed per
item and divided by the step's item count (``posttrain.engine.method``); L_aux is a mean over the step's tokens, so
each micro-batch adds its share: L_z is a token mean (linear), and L_balance = E sum_e f_e P_e is linear in the
probabilities once f_e is fixed, so with several micro-batches f_e is counted over the step first, by one no-grad
pass of the decoder (``prepare``), and gradient accumulation stays exact.
"""

from __future__ import annotations

import torch

from posttrain.math.moe import expert_utilization, load_balancing_loss, router_z_loss
from posttrain.models.forward import causal_lm, hidden_states


def moe_config(model):
    """The model's config if it routes tokens to experts (``num_local_experts``), else None."""
    config = causal_lm(model).config
    return config if getattr(config, "num_local_experts", None) else None


class RouterLogits:
    """``with RouterLogits(model) as caught:`` ... ``caught.logits``: one ``(B*T, E)`` tensor per MoE layer."""

    def __init__(self, model):
        self.routers = [m for name, m in causal_lm(model).named_modules() if name.endswith("mlp.gate")]
        self.logits: list[torch.Tensor] = []
        self._hooks = []

    def __enter__(self) -> "RouterLogits":
        self._hooks = [r.register_forward_hook(self._catch) for r in self.routers]
        return self

    def _catch(self, module, inputs, output) -> None:
        self.logits.append(output[0] if isinstance(output, tuple) else output)

    def __exit__(self, *exc) -> None:  # removed before backward: gradient checkpointing's recompute is not caught
        for hook in self._hooks:
            hook.remove()


class RouterLosses:
    """The router terms of one method's loss. ``prepare`` before a step's passes (all its micro-batches), then
    ``loss(model, batch, items, forward)`` per micro-batch: runs ``forward()`` catching the router logits and returns
    its result, the aux loss as a sum over the step's items (the engine divides by them) and metric sums."""

    def __init__(self, config, aux_coef: float | None, z_coef: float):
        self.top_k = config.num_experts_per_tok
        self.experts = config.num_local_experts
        self.aux_coef = getattr(config, "router_aux_loss_coef", 0.0) if aux_coef is None else aux_coef
        self.z_coef = z_coef
        self.step_tokens = 0  # real tokens of the step (all micro-batches)
        self.step_items = 0  # the method's items of the step (what the engine divides by)
        self.fractions: torch.Tensor | None = None  # (L, E): f_e per layer over the step; None: from the pass itself

    def prepare(self, model, micro_batches: list[dict[str, torch.Tensor]], items: int) -> None:
        self.step_tokens = sum(int(b["attention_mask"].sum()) for b in micro_batches)
        self.step_items, self.fractions = items, None
        if len(micro_batches) > 1 and self.aux_coef and model.training:
            counts = 0
            with torch.no_grad():
                for batch in micro_batches:
                    with RouterLogits(model) as caught:
                        hidden_states(model, batch)
                    mask = batch["attention_mask"].reshape(-1)
                    counts = counts + int(mask.sum()) * torch.stack(
                        [expert_utilization(x, self.top_k, mask) for x in caught.logits])
            self.fractions = counts / max(self.step_tokens, 1)

    def loss(self, model, batch: dict[str, torch.Tensor], forward):
        """``(forward(), aux loss summed over items, metric sums)``; the aux loss is 0 outside training (held-out
        losses stay the task's), the metrics are logged in both."""
        with RouterLogits(model) as caught:
            result = forward()
        mask = batch["attention_mask"].reshape(-1)
        share = int(mask.sum()) / max(self.step_tokens, 1)  # this micro-batch's part of the step's tokens
        layers = caught.logits
        balance = torch.stack([
            load_balancing_loss(x, self.top_k, mask, None if self.fractions is None else self.fractions[i])
            for i, x in enumerate(layers)]).mean() * share
        z = torch.stack([router_z_loss(x, mask) for x in layers]).mean() * share
        aux = self.aux_coef * balance + self.z_coef * z
        usage = torch.stack([expert_utilization(x.detach(), self.top_k, mask) for x in layers]).mean(0) * share
        scale = self.step_items  # metric sums: the engine divides them by the step's items
        metrics = {"router_aux_loss": float(aux.detach()) * scale,
                   "router_balance_loss": float(balance.detach()) * scale, "router_z_loss": float(z.detach()) * scale}
        metrics.update({f"expert_utilization_{e}": float(u) * scale for e, u in enumerate(usage)})
        if not model.training:
            aux = aux.detach() * 0
        return result, aux * scale, metrics
