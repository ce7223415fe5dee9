"""DPO family, SimPO, ORPO and KTO on the tiny model: each moves its own metric the right way; reference handling."""

import json

import pytest
import torch

from posttrain.api import train
from posttrain.data import DataConfig, load_rows, normalize_rows
from posttrain.data.preference import collate_pairs, tokenize_pairs
from posttrain.errors import DataError
from posttrain.models import LoraSettings, apply_lora, build_tiny_model
from posttrain.models.forward import token_logps
from posttrain.trainers import reference as reference_module
from posttrain.trainers.reference import ReferencePolicy


def pairs(n, offset=0):
    """Concise, correct answers preferred over rambling, wrong ones."""
    return [{"prompt": f"What is {i} + {i + 3}?", "chosen": f"The answer is {2 * i + 3}.",
             "rejected": f"Well, let me think about it for a while. Maybe it is {2 * i + 5}, I am not sure."}
            for i in range(offset, offset + n)]


def config(tmp_path, train_path, eval_path, **overrides):
    base = {
        "method": "dpo", "model": "tiny", "output_dir": str(tmp_path / "run"), "max_steps": 25, "batch_size": 4,
        "learning_rate": 2e-3, "lr_schedule": "constant", "logging_steps": 5, "progress_bar": False, "beta": 0.1,
        "data": {"path": str(train_path), "eval_path": str(eval_path), "max_length": 96},
    }
    base.update(overrides)
    return base


@pytest.fixture
def data(write_jsonl):
    return write_jsonl("train.jsonl", pairs(16)), write_jsonl("eval.jsonl", pairs(8, offset=40))


@pytest.mark.parametrize("overrides", [
    {"loss_type": "sigmoid"},
    {"loss_type": "hinge"},
    {"loss_type": "ipo", "beta": 0.5},
    {"loss_type": "robust", "label_smoothing": 0.1},
    {"loss_type": "cdpo", "label_smoothing": 0.1},
    {"loss_type": "sigmoid", "rpo_alpha": 1.0},
    {"method": "simpo", "beta": 2.0, "gamma": 0.5},
    {"method": "orpo", "orpo_lambda": 1.0},
], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_each_variant_raises_held_out_margin(tmp_path, data, overrides):
    evaluation = train(config(tmp_path, *data, **overrides))
    after, before = evaluation["metrics"], evaluation["baseline"]
    assert after["reward_margin"]["value"] > before["reward_margin"] + 0.05
    assert after["preference_accuracy"]["value"] >= 0.9
    log = [json.loads(line) for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    trained = [r for r in log if "loss" in r]
    assert trained[-1]["loss"] < trained[0]["loss"]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
                 "logps/rejected"):
        assert name in trained[0]
    assert ("kl/chosen" in trained[0]) == (overrides.get("method", "dpo") == "dpo")


def test_dpo_starts_at_ln2_with_chance_accuracy(tmp_path, data):
    evaluation = train(config(tmp_path, *data, max_steps=1, learning_rate=0.0))
    assert evaluation["baseline"]["loss"] == pytest.approx(0.693147, abs=1e-6)
    assert evaluation["baseline"]["preference_accuracy"] == 0.5  # every pair a tie: pi == pi_ref


def test_kto_separates_desirable_from_undesirable(tmp_path, data):
    evaluation = train(config(tmp_path, *data, method="kto", learning_rate=2e-3))
    after, before = evaluation["metrics"], evaluation["baseline"]
    assert before["reward_gap"] == pytest.approx(0.0, abs=1e-6)
    assert after["reward_gap"]["value"] > 0.5
    assert after["reward_desirable"]["value"] > 0 > after["reward_undesirable"]["value"]


def test_kto_accepts_unpaired_rows(tmp_path, write_jsonl):
    rows = [{"prompt": p["prompt"], "completion": p[kind], "label": kind == "chosen"}
            for p in pairs(12) for kind in ("chosen", "rejected")]
    path = write_jsonl("unpaired.jsonl", rows)
    evaluation = train(config(tmp_path, path, path, method="kto", max_steps=15))
    assert evaluation["metrics"]["reward_gap"]["value"] > evaluation["baseline"]["reward_gap"]


def test_precomputed_reference_is_cached_and_reused_without_a_reference_model(tmp_path, data, monkeypatch):
    cache = tmp_path / "cache"
    first = train(config(tmp_path, *data, precompute_ref_logps=True, ref_cache_dir=str(cache), max_steps=10))
    assert len(list(cache.iterdir())) == 1

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference model was built or run although the cache holds its log-probs")

    monkeypatch.setattr(reference_module, "compute_reference_logps", no_reference)
    monkeypatch.setattr(reference_module, "frozen_copy", no_reference)
    monkeypatch.setattr(ReferencePolicy, "token_logps", no_reference)
    second = train(config(tmp_path, *data, precompute_ref_logps=True, ref_cache_dir=str(cache), max_steps=10,
                          output_dir=str(tmp_path / "second")))
    assert second["metrics"] == first["metrics"]  # the same numbers from the cache as from computing
    monkeypatch.undo()
    # and the same run without precomputing (a frozen copy as the reference) agrees too
    live = train(config(tmp_path, *data, max_steps=10, output_dir=str(tmp_path / "live")))
    for name, value in first["metrics"].items():
        assert live["metrics"][name]["value"] == pytest.approx(value["value"], rel=1e-4, abs=1e-5)


def test_lora_reference_is_the_base_model_with_adapters_off(tokenizer):
    base = build_tiny_model(seed=3)
    reference_logits_model = build_tiny_model(seed=3)
    model = apply_lora(base, LoraSettings(enabled=True, r=4, dropout=0.0))
    for name, param in model.named_parameters():  # move the adapters away from their zero init
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    rows = normalize_rows(load_rows_from(pairs(3)), DataConfig(max_length=64), ("preference",))[1]
    examples, _ = tokenize_pairs(rows, tokenizer, DataConfig(max_length=64))
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    reference = ReferencePolicy(model)
    assert reference.frozen is None  # no second copy of the weights under LoRA
    expected = token_logps(reference_logits_model, batch)[0].logps
    assert torch.allclose(reference.token_logps(model, batch), expected, atol=1e-6)
    assert not torch.allclose(token_logps(model, batch)[0].logps, expected, atol=1e-3)  # adapters on: different


def load_rows_from(rows):
    from posttrain.data.sources import Row

    return [Row(r, f"row {i + 1}") for i, r in enumerate(rows)]


def test_identical_pairs_are_skipped_and_counted(tokenizer):
    rows = pairs(3)
    rows[1]["rejected"] = rows[1]["chosen"]
    examples, stats = tokenize_pairs(load_rows_from(rows), tokenizer, DataConfig(max_length=64))
    assert len(examples) == 2 and stats.skipped_identical == 1 and stats.skipped_where == ["row 2"]


def test_bad_preference_rows_name_the_row_and_key(tmp_path, write_jsonl):
    rows = pairs(3)
    rows[2]["rejected"] = "  "
    path = write_jsonl("bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad.jsonl:3.*'rejected' is empty"):
        normalize_rows(load_rows(str(path)), DataConfig(), ("preference",))
    del rows[1]["chosen"]
    rows[2]["rejected"] = "fine"
    path = write_jsonl("missing.jsonl", rows)
    with pytest.raises(DataError, match=r"missing.jsonl:2.*missing column 'chosen'"):
        normalize_rows(load_rows(str(path)), DataConfig(), ("preference",))


def test_packed_pairs_hold_each_prompt_once_and_keep_the_branches_apart(tokenizer):
    """The layout itself: pair k is p[:-1] | p[-1] chosen | p[-1] rejected, P + C + R + 1 positions; the rejected
    branch's positions continue the prompt's as the chosen branch's do, and no rejected token attends to a chosen
    one; padding attends only to itself."""
    from posttrain.data.preference import collate_pairs_packed

    rows = pairs(3)
    rows[0]["chosen"] = "A much longer answer than the others, so that one pair needs a row of its own here."
    examples, _ = tokenize_pairs(load_rows_from(rows), tokenizer, DataConfig(max_length=96))
    batch = collate_pairs_packed(examples, tokenizer.pad_token_id)
    assert int(batch["attention_mask"].sum()) == sum(
        len(e.prompt_ids) + 1 + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    mask = batch["attention_mask_4d"][:, 0]
    index, positions = batch["sequence_index"], batch["position_ids"]
    for k, e in enumerate(examples):
        P = len(e.prompt_ids)
        r, cols = torch.nonzero(index == len(examples) + k, as_tuple=True)  # the rejected branch: p[-1] + rejected
        r = int(r[0])
        assert batch["input_ids"][r, cols].tolist() == e.prompt_ids[-1:] + e.rejected_ids
        assert positions[r, cols].tolist() == list(range(P - 1, P + len(e.rejected_ids)))
        seen = torch.nonzero(mask[r, cols[-1]]).flatten()  # what the rejected's last token attends to
        assert batch["input_ids"][r, seen].tolist() == e.prompt_ids + e.rejected_ids
        chosen_cols = torch.nonzero(index[r] == k).flatten()[P - 1:]  # p[-1] + chosen (after the shared prefix)
        assert batch["input_ids"][r, chosen_cols].tolist() == e.prompt_ids[-1:] + e.chosen_ids
        assert not mask[r][cols][:, chosen_cols].any()
        assert int(batch["loss_mask"][r, cols].sum()) == len(e.rejected_ids)
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (mask[pad].sum(-1) == 1).all()


def test_chosen_and_rejected_share_one_forward_pass(tokenizer):
    examples, _ = tokenize_pairs(load_rows_from(pairs(2)), tokenizer, DataConfig(max_length=64))
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert batch["input_ids"][0].tolist()[: len(examples[0].prompt_ids)] == examples[0].prompt_ids
    assert batch["loss_mask"][2].sum() == len(examples[0].rejected_ids)  # row 2: the first pair's rejected


@pytest.mark.parametrize("loss_type,attention", [("sigmoid", "sdpa"), ("ipo", "sdpa"), ("sigmoid", "eager")])
def test_packed_pairs_give_the_padded_loss_metrics_and_gradients(tokenizer, loss_type, attention):
    """pack_pairs puts a step's pairs back to back, each prompt once, its two completions in branches that do not
    see each other: the loss, every metric and the gradients must equal the padded batch's, under both forms of
    ready-made mask (SDPA's boolean one, eager attention's additive one)."""
    from posttrain.trainers.dpo import DPOConfig, PreferenceMethod

    rows = pairs(5)
    rows[1]["chosen"] = "A much longer answer, so that the two completions of this pair differ a lot in length."
    examples, _ = tokenize_pairs(load_rows_from(rows), tokenizer, DataConfig(max_length=96))
    model = build_tiny_model(seed=4)
    reference_model = build_tiny_model(seed=5)  # a reference that differs from the policy
    for m in (model, reference_model):
        m.config._attn_implementation = attention
    reference = ReferencePolicy(reference_model)
    results = []
    for packed in (False, True):
        method = PreferenceMethod(DPOConfig(loss_type=loss_type, beta=0.5, rpo_alpha=0.3, pack_pairs=packed),
                                  reference)
        batch = method.collate(examples, tokenizer.pad_token_id)
        assert ("position_ids" in batch) == packed
        model.zero_grad()
        out = method.loss(model, batch)
        out.loss_sum.backward()
        results.append((out.loss_sum.item(), out.metrics, model.model.layers[1].mlp.down_proj.weight.grad.clone(),
                        method.count(batch)))
    (loss_a, metrics_a, grad_a, count_a), (loss_b, metrics_b, grad_b, count_b) = results
    assert count_a == count_b == 5
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert metrics_b == pytest.approx(metrics_a, rel=1e-4, abs=1e-5)
    assert torch.allclose(grad_a, grad_b, rtol=1e-4, atol=1e-6)
