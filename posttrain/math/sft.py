"""Supervised fine-tuning loss.

Negative log-likelihood of the completion tokens only (prompt tokens carry no loss by default):

    L_SFT = - (1 / |C|) sum_{t in C} log pi_theta(y_t | y_<t)

where ``C`` is the set of completion tokens in the whole (accumulated) batch. Normalising by the token count of the
full optimizer step, not of each micro-batch, makes gradient accumulation exact: 8 micro-batches of 1 give the
same loss and gradient as 1 batch of 8 (the per-micro-batch mean is biased towards short sequences; see the
gradient accumulation fix in transformers 4.46).
"""

from __future__ import annotations

import torch

from posttrain.math.logprobs import masked_sum


def sft_nll_sum(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed NLL of the masked tokens, - sum_{t in C} logp_t. The engine divides by the step's token count |C|.

    Shapes: logps ``(B, T)`` and mask ``(B, T)`` -> scalar.
    """
    return -masked_sum(logps, mask)
