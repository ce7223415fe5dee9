"""method: classify on the tiny model: it learns a toy task (held-out accuracy up); head-only training leaves every
decoder weight bit-identical; padded batches pool as rows alone; string labels round-trip through the saved model
and `posttrain predict`; last pooling loads as plain AutoModelForSequenceClassification; LoRA trains adapters and
the head; regression learns; bad rows are one-line errors naming file and row."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from posttrain.api import train
from posttrain.cli import main
from posttrain.data.classification import LabeledExample, collate_labeled, encode_text
from posttrain.errors import DataError
from posttrain.models import build_tiny_model
from posttrain.models.classifier import ClassifierSpec, build_classifier, load_classifier
from posttrain.trainers.classify import predict_file

FILLER = "the a of and to in is it that was for on with as by at from".split()


def toy_rows(n, seed):
    """A word that names the class ("apple": fruit, "stone": rock) somewhere among filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["fruit", "rock"])
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), "apple" if label == "fruit" else "stone")
        rows.append({"text": " ".join(words), "label": label})
    return rows


def config(tmp_path, train_path, eval_path, name="run", **overrides):
    base = {"method": "classify", "model": "tiny", "output_dir": str(tmp_path / name), "max_steps": 30,
            "batch_size": 8, "learning_rate": 3e-3, "lr_schedule": "constant", "logging_steps": 10,
            "progress_bar": False, "freeze": {"embeddings": True},  # the 49k x 64 embedding is most of the step time
            "data": {"path": str(train_path), "eval_path": str(eval_path), "max_length": 32}}
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify_data")
    paths = []
    for name, rows in (("train.jsonl", toy_rows(96, 1)), ("eval.jsonl", toy_rows(48, 2))):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def last_pooling_run(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("classify")
    return tmp_path / "run", train(config(tmp_path, *data, pooling="last"))


def test_classify_learns_the_toy_task(last_pooling_run):
    _, evaluation = last_pooling_run
    assert evaluation["baseline"]["accuracy"] < 0.7
    assert evaluation["metrics"]["accuracy"]["value"] >= evaluation["baseline"]["accuracy"] + 0.25
    assert evaluation["metrics"]["loss"]["value"] < evaluation["baseline"]["loss"]
    details = evaluation["details"]
    assert details["labels"] == ["fruit", "rock"]
    assert sum(map(sum, details["confusion_matrix"])) == 48


def test_last_pooling_loads_as_plain_transformers_and_labels_round_trip(last_pooling_run, data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run, _ = last_pooling_run
    final = run / "final"
    plain = AutoModelForSequenceClassification.from_pretrained(str(final)).eval()
    assert plain.config.id2label == {0: "fruit", 1: "rock"}
    ours, tokenizer = load_classifier(final)
    texts = ["apple of the", "to stone in is it a the"]
    batch = collate_labeled([LabeledExample(ids, [0] * len(ids)) for ids in
                             (encode_text(tokenizer, t, None, 32) for t in texts)], tokenizer.pad_token_id)
    with torch.no_grad():
        expected = ours(batch)
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(str(final)).pad_token_id == plain.config.pad_token_id
    # `posttrain predict`: names come back, metrics on labelled input
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", str(final), "--input", str(data[1]), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 48 and {line["prediction"] for line in lines} <= {"fruit", "rock"}
    result = predict_file(str(final), str(data[1]), str(out))
    assert result["metrics"]["accuracy"] == pytest.approx(last_pooling_run[1]["metrics"]["accuracy"]["value"])


@pytest.mark.parametrize("pooling", ["mean", "last", "first", "max"])
def test_padded_batch_pools_like_each_row_alone(pooling):
    model, _ = build_classifier(ClassifierSpec(3, "single_label_classification", pooling, hidden_layer=True,
                                               base_model="tiny"))
    model.eval()
    rows = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    examples = [LabeledExample(r, [0] * len(r)) for r in rows]
    with torch.no_grad():
        together = model(collate_labeled(examples, pad_token_id=0))
        alone = torch.cat([model(collate_labeled([e], pad_token_id=0)) for e in examples])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_head_only_leaves_the_decoder_bit_identical(tmp_path, data):
    evaluation = train(config(tmp_path, *data, head_only=True, head_hidden_layer=True, max_steps=3, freeze={}))
    final = tmp_path / "run" / "final"
    saved = load_file(final / "model.safetensors")
    initial = build_tiny_model(seed=0).state_dict()
    for name, tensor in saved.items():
        if name != "score.weight":
            assert torch.equal(tensor, initial[name]), name
    head = load_file(final / "head.safetensors")
    assert evaluation["trainable_parameters"] == saved["score.weight"].numel() + sum(t.numel() for t in head.values())


def test_lora_trains_adapters_and_the_head(tmp_path, data):
    evaluation = train(config(tmp_path, *data, lora={"enabled": True, "r": 4}, max_steps=3, freeze={}))
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").is_file()
    adapter = load_file(final / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("score" in k for k in adapter)
    model, _ = load_classifier(final)
    assert model.spec.labels == ["fruit", "rock"] and evaluation["steps"] == 3


def test_regression_learns(tmp_path, write_jsonl):
    rng = random.Random(0)
    rows = [{"text": " ".join(["stone"] * k + [rng.choice(FILLER)]), "label": k / 4} for k in range(1, 5)
            for _ in range(8)]
    path = write_jsonl("reg.jsonl", rows)
    evaluation = train(config(tmp_path, path, path, num_labels=1, max_steps=20, pooling="mean"))
    assert evaluation["problem_type"] == "regression"
    assert evaluation["metrics"]["mse"]["value"] < 0.5 * evaluation["baseline"]["mse"]


@pytest.mark.parametrize("rows,overrides,message", [
    ([{"text": "a"}], {}, r"train.jsonl:1: missing column 'label'"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], {"labels": ["x", "z"]}, r":2: unknown label 'y'"),
    ([{"text": "a", "label": 0}, {"text": "b", "label": 3}], {"num_labels": 2}, r":2: label 3 is outside the classes 0-1"),
    ([{"text": "a", "label": 0.5}], {}, r"not a class id; for regression set num_labels: 1"),
])
def test_bad_rows_name_file_and_row(tmp_path, write_jsonl, rows, overrides, message):
    path = write_jsonl("train.jsonl", rows)
    with pytest.raises(DataError, match=message):
        train(config(tmp_path, path, path, **overrides))


class Interrupt(Exception):
    pass


def test_resume_continues_exactly(tmp_path, data):
    """Interrupted after a checkpoint and resumed: the same final head and decoder as an uninterrupted run (hidden
    layer included, so the classifier's own files are read back)."""
    settings = dict(max_steps=4, save_steps=2, head_hidden_layer=True, eval_on_start=False)
    train(config(tmp_path, *data, name="ref", **settings))

    def stop_at_3(engine, state):
        if state["step"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config(tmp_path, *data, name="resumed", **settings), callbacks=[stop_at_3])
    train(config(tmp_path, *data, name="resumed", **settings))
    for name in ("model.safetensors", "head.safetensors"):
        ref, resumed = load_file(tmp_path / "ref" / "final" / name), load_file(tmp_path / "resumed" / "final" / name)
        assert all(torch.equal(ref[k], resumed[k]) for k in ref), name


def test_multi_label_with_text_pairs_trains_and_predicts_lists(tmp_path, write_jsonl):
    rng = random.Random(0)
    rows = []
    for _ in range(24):
        tags = sorted({t for t in ("apple", "stone") if rng.random() < 0.5})
        rows.append({"text": " ".join(tags + [rng.choice(FILLER)]), "text_pair": rng.choice(FILLER), "label": tags})
    path = write_jsonl("multi.jsonl", rows)
    evaluation = train(config(tmp_path, path, path, multi_label=True, max_steps=3))
    assert evaluation["problem_type"] == "multi_label_classification" and evaluation["labels"] == ["apple", "stone"]
    assert {"label_accuracy", "exact_match", "macro_f1"} <= set(evaluation["metrics"])
    result = predict_file(str(tmp_path / "run" / "final"), str(path), str(tmp_path / "p.jsonl"))
    predictions = [json.loads(line)["prediction"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(set(p) <= {"apple", "stone"} for p in predictions) and "label_accuracy" in result["metrics"]


def test_plot_draws_the_confusion_matrix(last_pooling_run, tmp_path):
    from posttrain.eval.plot import plot_run

    written = plot_run(last_pooling_run[0], tmp_path / "plots")
    assert tmp_path / "plots" / "confusion_matrix.png" in written
    assert (tmp_path / "plots" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
