"""PPO's critic: the policy and its value model (or a value head on the policy) as the engine's one trainable module,
the files a run saves them as, and how the critic is built from the config (``value_init``, ``value_model``,
``shared_value_head``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from posttrain.engine.checkpoint import load_model_weights
from posttrain.errors import ConfigError
from posttrain.io import atomic_dir
from posttrain.models.forward import causal_lm, hidden_states, logps_from_hidden
from posttrain.models.lora import is_peft_model
from posttrain.models.reward_model import load_reward_model
from posttrain.models.saving import save_model
from posttrain.trainers.common import log_trainable


class PolicyAndValue(torch.nn.Module):
    """The engine's one trainable module: the policy and its critic (a value model, or a value head on the policy).

    ``forward(batch)`` gives, on the shifted token grid ``(B, T-1)`` (position t scores token t+1 and values the
    state before it), the policy's token log-probs (and entropy), the values V(s_t), and the completion mask."""

    def __init__(self, policy, value_model=None, value_head: torch.nn.Linear | None = None):
        super().__init__()
        self.policy, self.value_model, self.value_head = policy, value_model, value_head

    def forward(self, batch: dict[str, torch.Tensor], temperature: float = 1.0, with_entropy: bool = False):
        hidden = hidden_states(self.policy, batch)
        stats, mask = logps_from_hidden(self.policy, hidden, batch, with_entropy=with_entropy, temperature=temperature)
        if self.value_head is None:
            hidden, head = hidden_states(self.value_model, batch), causal_lm(self.value_model).score
        else:
            head = self.value_head
        values = head(hidden[:, :-1]).squeeze(-1).float()
        return stats, values * mask, mask


@dataclass
class PolicyAndValueFiles:
    """The policy as ``final/`` is saved (loadable by transformers / peft), the critic beside it: ``value_head``
    safetensors, or a ``value_model/`` folder that ``value_model: <folder>`` starts a later run from."""

    model: PolicyAndValue
    tokenizer: Any
    base_spec: str

    def save(self, directory: Path, save_merged: bool = False) -> None:
        with atomic_dir(directory) as tmp:
            save_model(self.model.policy, self.tokenizer, tmp, save_merged=save_merged, base_spec=self.base_spec)
            if self.model.value_head is not None:
                save_file({k: v.detach().contiguous() for k, v in self.model.value_head.state_dict().items()},
                          tmp / "value_head.safetensors")
            else:
                save_model(self.model.value_model, self.tokenizer, tmp / "value_model")

    def load(self, directory: Path) -> None:
        load_model_weights(self.model.policy, directory)
        if self.model.value_head is not None:
            self.model.value_head.load_state_dict(load_file(Path(directory) / "value_head.safetensors"))
        else:
            load_model_weights(self.model.value_model, Path(directory) / "value_model")


def build_critic(config, policy, tokenizer):
    """``(value_model, value_head)``, one of them None. The value model reads the policy's token ids, so it must
    share the policy's vocabulary; its architecture may differ (it runs its own decoder)."""
    if config.shared_value_head:
        hidden_size = causal_lm(policy).config.get_text_config().hidden_size
        head = torch.nn.Linear(hidden_size, 1).to(next(policy.parameters()).device)
        torch.nn.init.zeros_(head.weight)  # V = 0 to start: no worse than the mean return, and no random bias
        torch.nn.init.zeros_(head.bias)
        return None, head
    source = config.value_model
    if source is None:
        if config.value_init == "reward" and not config.reward_model:
            raise ConfigError("value_init=reward starts the value model from the reward model, but reward_model is "
                              "not set: set reward_model, value_init=policy, value_model=<folder> or "
                              "shared_value_head=true")
        source = config.reward_model if config.value_init == "reward" else config.model
    dtype = "float32" if config.dtype == "auto" else config.dtype
    value_model, value_tokenizer = load_reward_model(source, dtype, config.device, config.trust_remote_code, config.seed)
    if is_peft_model(value_model):  # a LoRA reward model: the critic trains in full
        value_model = value_model.merge_and_unload()
    if value_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"value model {source!r} has another tokenizer than the policy {config.model!r}: the critic "
                          "values the policy's own tokens; use value_init=policy or shared_value_head=true")
    value_model.requires_grad_(True)
    log_trainable(value_model, f"value model from {source}")
    return value_model.to(next(policy.parameters()).device), None

