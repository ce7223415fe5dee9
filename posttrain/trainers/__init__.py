"""One file per method family: its config dataclass on top, then a loss/step that reads like the paper."""

from posttrain.trainers.classify import ClassifyConfig, ClassifyMethod, train_classify
from posttrain.trainers.distill import DistillConfig, DistillMethod, train_distill
from posttrain.trainers.dpo import DPOConfig, PreferenceMethod, train_dpo
from posttrain.trainers.gkd import GKDConfig, GKDMethod, train_gkd
from posttrain.trainers.grpo import GRPOConfig, PolicyGradientMethod, train_grpo
from posttrain.trainers.kto import KTOConfig, KTOMethod, train_kto
from posttrain.trainers.online_dpo import OnlineDPOConfig, OnlineDPOMethod, train_online_dpo
from posttrain.trainers.ppo import PPOConfig, PPOMethod, train_ppo
from posttrain.trainers.reward_model import RewardConfig, RewardModelMethod, train_reward
from posttrain.trainers.sft import SFTConfig, SFTMethod, train_sft

# method name -> (config class, train function): the CLI and posttrain.train dispatch through this table
METHODS = {
    "sft": (SFTConfig, train_sft),
    "dpo": (DPOConfig, train_dpo),
    "simpo": (DPOConfig, train_dpo),
    "orpo": (DPOConfig, train_dpo),
    "kto": (KTOConfig, train_kto),
    "grpo": (GRPOConfig, train_grpo),
    "rloo": (GRPOConfig, train_grpo),
    "reinforce": (GRPOConfig, train_grpo),
    "reward": (RewardConfig, train_reward),
    "ppo": (PPOConfig, train_ppo),
    "online_dpo": (OnlineDPOConfig, train_online_dpo),
    "distill": (DistillConfig, train_distill),
    "gkd": (GKDConfig, train_gkd),
    "classify": (ClassifyConfig, train_classify),
}

__all__ = ["METHODS", "ClassifyConfig", "ClassifyMethod", "train_classify", "DistillConfig", "DistillMethod", "train_distill", "GKDConfig", "GKDMethod", "train_gkd", "DPOConfig", "GRPOConfig", "PolicyGradientMethod", "train_grpo", "KTOConfig", "KTOMethod", "OnlineDPOConfig", "OnlineDPOMethod", "train_online_dpo", "PPOConfig", "PPOMethod", "train_ppo", "PreferenceMethod", "RewardConfig", "RewardModelMethod", "SFTConfig", "SFTMethod", "train_dpo",
           "train_kto", "train_reward", "train_sft"]
