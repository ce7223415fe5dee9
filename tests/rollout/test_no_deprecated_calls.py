"""posttrain calls no API its libraries have deprecated. The module filter in pyproject.toml catches deprecations
attributed to posttrain's own modules; a library that warns from inside ``nn.Module.__call__`` (transformers' renamed
``past_key_values`` -> ``cache``) attributes the warning to torch instead, so the paths that call models run here with
every FutureWarning and DeprecationWarning an error, wherever it is attributed."""

import warnings

import torch

from posttrain.models import build_tiny_model
from posttrain.models.forward import token_logps
from posttrain.rollout import SamplingParams, sample


def test_both_decoders_and_the_training_forward_use_no_deprecated_api(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_positions=128, n_embd=32, n_layer=1, n_head=2)).eval()
    llama = build_tiny_model(seed=0).eval()
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=0)
    prompts = [tokenizer.encode("Hello"), tokenizer.encode("What is 2 + 3?")]
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "loss_mask": torch.tensor([[0, 1, 1, 1]])}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        for model, backend in ((gpt2, "auto"), (llama, "hf"), (llama, "llama")):  # the generic path twice, the fast one
            rollout = sample(model, tokenizer, prompts, params, backend=backend)
            assert len(rollout.completion_ids) == 2
        token_logps(llama, batch)
