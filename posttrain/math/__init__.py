"""Pure tensor math: log-probs, masked statistics and every loss. Imports only torch (a test enforces it)."""

from posttrain.math.logprobs import (
    TokenLogps,
    chunked_token_logps,
    masked_mean,
    masked_sum,
    naive_token_logps,
    sequence_token_logps,
    shifted_targets,
)
from posttrain.math.sft import sft_nll_sum

__all__ = [
    "TokenLogps",
    "chunked_token_logps",
    "masked_mean",
    "masked_sum",
    "naive_token_logps",
    "sequence_token_logps",
    "sft_nll_sum",
    "shifted_targets",
]
