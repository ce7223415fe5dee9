"""method: classify on an encoder (a tiny random BERT built in-process, its WordPiece vocabulary written here): it is
detected as an encoder, loaded with AutoModel, learns the toy task, and saves, loads back and predicts the same
outputs; a padded batch pools like each row alone."""

import json

import pytest
import torch

from posttrain.api import train
from posttrain.data.classification import LabeledExample, collate_labeled, encode_text
from posttrain.models.classifier import ClassifierSpec, build_classifier, is_encoder, load_classifier
from posttrain.trainers.classify import predict_file

from tests.trainers.test_classify import FILLER, toy_rows


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, "apple", "stone"]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder_data")
    for name, rows in (("train.jsonl", toy_rows(96, 1)), ("eval.jsonl", toy_rows(48, 2))):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "train.jsonl", folder / "eval.jsonl"


def test_encoder_is_detected_and_pools_padded_batches_like_rows(tiny_bert):
    assert is_encoder(str(tiny_bert)) and not is_encoder("tiny")
    classifier, tokenizer = build_classifier(ClassifierSpec(2, "single_label_classification", "mean",
                                                            base_model=str(tiny_bert)))
    assert classifier.spec.encoder and classifier.score is not None and type(classifier.model).__name__ == "BertModel"
    assert classifier.model.pooler is None
    ids = [encode_text(tokenizer, text, None, 32) for text in ("apple of the", "to stone in is it a the and")]
    assert ids[0][0] == tokenizer.cls_token_id and ids[0][-1] == tokenizer.sep_token_id
    truncated = encode_text(tokenizer, "to stone in is it a the and", None, 4)  # keeps [CLS] and the end
    assert truncated == [tokenizer.cls_token_id, *ids[1][-3:]]
    classifier.eval()
    batch = collate_labeled([LabeledExample(i, [0] * len(i)) for i in ids], tokenizer.pad_token_id)
    together = classifier(batch)
    alone = torch.cat([classifier(collate_labeled([LabeledExample(i, [0] * len(i))], tokenizer.pad_token_id))
                       for i in ids])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_encoder_learns_saves_loads_and_predicts(tiny_bert, data, tmp_path):
    run = tmp_path / "run"
    evaluation = train({"method": "classify", "model": str(tiny_bert), "output_dir": str(run), "max_steps": 40,
                        "batch_size": 8, "learning_rate": 3e-3, "lr_schedule": "constant", "logging_steps": 10,
                        "progress_bar": False, "pooling": "mean",
                        "data": {"path": str(data[0]), "eval_path": str(data[1]), "max_length": 32}})
    assert evaluation["baseline"]["accuracy"] < 0.75
    assert evaluation["metrics"]["accuracy"]["value"] >= 0.9
    assert evaluation["metrics"]["loss"]["value"] < evaluation["baseline"]["loss"]
    final = run / "final"
    assert json.loads((final / "classifier.json").read_text())["encoder"] is True
    assert (final / "score.safetensors").is_file()
    model, tokenizer = load_classifier(final)
    assert type(model.model).__name__ == "BertModel"
    result = predict_file(str(final), str(data[1]), str(tmp_path / "predictions.jsonl"))
    assert result["metrics"]["accuracy"] == pytest.approx(evaluation["metrics"]["accuracy"]["value"])
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in data[1].read_text().splitlines()]
    assert sum(p["prediction"] == r["label"] for p, r in zip(predictions, rows)) / len(rows) >= 0.9


@pytest.mark.parametrize("variant", [{"lora": {"enabled": True, "r": 4}}, {"head_only": True}])
def test_encoder_lora_and_head_only_round_trip(tiny_bert, data, tmp_path, variant):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    train({"method": "classify", "model": str(tiny_bert), "output_dir": str(run), "max_steps": 4, "batch_size": 8,
           "learning_rate": 3e-3, "progress_bar": False, "pooling": "first", "head_hidden_layer": True, **variant,
           "data": {"path": str(data[0]), "eval_path": str(data[1]), "max_length": 32}})
    final = run / "final"
    if "head_only" in variant:  # the encoder is untouched: its saved weights are the base's, bit for bit
        base, saved = load_file(tiny_bert / "model.safetensors"), load_file(final / "model.safetensors")
        assert set(saved) <= set(base) and all(torch.equal(saved[k], base[k]) for k in saved)
    else:
        assert (final / "adapter_model.safetensors").is_file()
    model, tokenizer = load_classifier(final)
    rows = [json.loads(line) for line in data[1].read_text().splitlines()][:6]
    ids = [encode_text(tokenizer, r["text"], None, 32) for r in rows]
    outputs = model(collate_labeled([LabeledExample(i, [0] * len(i)) for i in ids], tokenizer.pad_token_id))
    result = predict_file(str(final), str(data[1]), str(tmp_path / "predictions.jsonl"))
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()][:6]
    expected = torch.softmax(outputs, -1)[:, 0].tolist()
    assert [p["probabilities"][model.spec.labels[0]] for p in predictions] == pytest.approx(expected, abs=1e-5)
    assert result["n_examples"] == 48
