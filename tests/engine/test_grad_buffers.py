"""Training forward passes add the tied embedding/head gradients straight into ``.grad`` (no dense temporaries):
the gradients must equal those of the plain autograd path."""

import torch

from posttrain.math import sft_nll_sum
from posttrain.models import forward
from posttrain.models.loading import build_tiny_model


def _grads(model, batch, micro_batches=2):
    model.zero_grad(set_to_none=True)
    for _ in range(micro_batches):  # the second pass accumulates onto existing .grad buffers
        stats, mask = forward.token_logps(model, batch)
        sft_nll_sum(stats.logps, mask).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_in_place_embedding_and_head_gradients_match_autograd(monkeypatch):
    model = build_tiny_model()
    model.train()
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied, as in SmolLM2
    pad = model.get_input_embeddings().padding_idx
    input_ids = torch.randint(3, 49152, (3, 12), generator=torch.Generator().manual_seed(0))
    input_ids[2, -3:] = pad  # nn.Embedding gives its padding row no gradient: the in-place path must agree
    loss_mask = torch.ones_like(input_ids)
    loss_mask[:, :4] = 0
    batch = {"input_ids": input_ids, "attention_mask": (input_ids != pad).long(), "loss_mask": loss_mask}

    in_place = _grads(model, batch)
    monkeypatch.setattr(forward, "_input_embeddings", lambda lm, ids: None)  # the decoder's own nn.Embedding
    plain_head = forward.sequence_token_logps
    monkeypatch.setattr(forward, "sequence_token_logps",
                        lambda *a, **k: plain_head(*a, **{**k, "accumulate_grad_in_place": False}))
    plain = _grads(model, batch)

    assert in_place.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(in_place[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
