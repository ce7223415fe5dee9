"""One file per method family: its config dataclass on top, then a loss/step that reads like the paper."""

from posttrain.trainers.dpo import DPOConfig, PreferenceMethod, train_dpo
from posttrain.trainers.kto import KTOConfig, KTOMethod, train_kto
from posttrain.trainers.sft import SFTConfig, SFTLoss, train_sft

# method name -> (config class, train function): the CLI and posttrain.train dispatch through this table
METHODS = {
    "sft": (SFTConfig, train_sft),
    "dpo": (DPOConfig, train_dpo),
    "simpo": (DPOConfig, train_dpo),
    "orpo": (DPOConfig, train_dpo),
    "kto": (KTOConfig, train_kto),
}

__all__ = ["METHODS", "DPOConfig", "KTOConfig", "KTOMethod", "PreferenceMethod", "SFTConfig", "SFTLoss", "train_dpo",
           "train_kto", "train_sft"]
