"""One file per method family: its config dataclass on top, then a loss/step that reads like the paper."""

from posttrain.trainers.sft import SFTConfig, SFTLoss, train_sft

# method name -> (config class, train function): the CLI and posttrain.train dispatch through this table
METHODS = {"sft": (SFTConfig, train_sft)}

__all__ = ["METHODS", "SFTConfig", "SFTLoss", "train_sft"]
