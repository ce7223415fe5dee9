"""Sparse upcycling (posttrain.models.upcycling, `posttrain upcycle`)."""

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.math.moe import expert_utilization, load_balancing_loss
from posttrain.models import build_tiny_model
from posttrain.models.upcycling import upcycle_model

VOCAB = 256


def test_upcycled_folder_computes_the_dense_function(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from posttrain.api import upcycle

    dense = build_tiny_model(0, vocab_size=VOCAB).eval()
    dense.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    out = upcycle(str(tmp_path / "dense"), tmp_path / "moe", experts=4, top_k=2)
    moe = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # a plain transformers folder
    assert type(moe).__name__ == "MixtralForCausalLM" and moe.config.num_local_experts == 4
    assert "upcycl" in (out / "README.md").read_text().lower()
    ids = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = dense(ids).logits, moe(ids).logits
    assert torch.allclose(actual, expected, atol=1e-5)
    # the routers are not degenerate: different tokens pick different experts, and identical experts make it moot
    routed = moe(ids, output_router_logits=True).router_logits[0]
    assert (expert_utilization(routed, 2) > 0).sum() >= 2


def test_aux_loss_trains_the_router_towards_balance():
    dense = build_tiny_model(0, vocab_size=VOCAB)
    moe = upcycle_model(dense, num_experts=4, top_k=1, seed=0)
    with torch.no_grad():  # a router that sends most tokens to expert 0
        for layer in moe.model.layers:
            layer.mlp.gate.weight[0] += 0.5 * layer.mlp.gate.weight[0].sign()
    routers = [layer.mlp.gate.weight for layer in moe.model.layers]
    optimizer = torch.optim.SGD(routers, lr=0.5)
    for p in moe.parameters():
        p.requires_grad_(any(p is r for r in routers))
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(15):
        logits = moe(ids, output_router_logits=True).router_logits
        loss = sum(load_balancing_loss(layer_logits, 1) for layer_logits in logits) / len(logits)
        optimizer.zero_grad()
        loss.backward()
        assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in routers)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    print(f"aux loss over 15 router-only SGD steps: {losses[0]:.3f} -> {losses[-1]:.3f}")


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    from posttrain.cli import main

    dense = build_tiny_model(0, vocab_size=VOCAB)
    with pytest.raises(ConfigError, match="--top-k"):
        upcycle_model(dense, num_experts=2, top_k=3)
    dense.save_pretrained(tmp_path / "dense")
    capsys.readouterr()  # the save's progress bar
    assert main(["upcycle", "--model", str(tmp_path / "dense"), "--experts", "2", "--top-k", "3",
                 "--out", str(tmp_path / "moe")]) == 2
    error = capsys.readouterr().err.strip()
    assert "--top-k" in error and len(error.splitlines()) == 1 and not (tmp_path / "moe").exists()
