"""Pure tensor math: log-probs, masked statistics and every loss. Imports only torch (a test enforces it)."""

from posttrain.math.advantages import (
    discounted_returns,
    generalized_advantage_estimation,
    group_advantages,
    token_gae,
    whiten,
)
from posttrain.math.logprobs import (
    TokenLogps,
    chunked_token_logps,
    masked_mean,
    masked_sum,
    naive_token_logps,
    sequence_token_logps,
    shifted_targets,
)
from posttrain.math.policy import (
    ClippedLoss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    kl_estimate,
    policy_gradient_loss,
)
from posttrain.math.preference import (
    DPO_LOSSES,
    PreferenceLoss,
    bradley_terry_loss,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    reward_centering_penalty,
    simpo_loss,
)
from posttrain.math.rlhf import (
    adaptive_kl_coef,
    explained_variance,
    kl_penalized_rewards,
    token_level_scores,
)
from posttrain.math.sft import sft_nll_sum

__all__ = [
    "DPO_LOSSES",
    "PreferenceLoss",
    "bradley_terry_loss",
    "dpo_loss",
    "kto_loss",
    "kto_reference_point",
    "orpo_loss",
    "reward_centering_penalty",
    "simpo_loss",
    "ClippedLoss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "discounted_returns",
    "entropy_from_logits",
    "generalized_advantage_estimation",
    "group_advantages",
    "kl_estimate",
    "policy_gradient_loss",
    "token_gae",
    "whiten",
    "TokenLogps",
    "chunked_token_logps",
    "masked_mean",
    "masked_sum",
    "naive_token_logps",
    "sequence_token_logps",
    "sft_nll_sum",
    "adaptive_kl_coef",
    "explained_variance",
    "kl_penalized_rewards",
    "token_level_scores",
    "shifted_targets",
]
