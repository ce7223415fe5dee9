"""final/ carries a Hub model card, and `posttrain push` uploads the folder as it is. There is no network here: the
push test replaces huggingface_hub's HfApi with a recorder, so it checks what we send, not the Hub's answer."""

import json

import pytest
import yaml

from posttrain.api import train
from posttrain.cli import main
from posttrain.data.synthetic import arithmetic_sft
from posttrain.models.model_card import base_model_identity


@pytest.fixture
def trained(tmp_path, write_jsonl):
    train_rows, eval_rows = arithmetic_sft(n_train=32, n_eval=8, seed=1)
    train({"method": "sft", "model": "tiny", "output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4,
           "progress_bar": False, "data": {"path": str(write_jsonl("train.jsonl", train_rows)),
                                           "eval_path": str(write_jsonl("eval.jsonl", eval_rows)), "max_length": 64}})
    return tmp_path / "run"


def test_final_has_a_hub_model_card_with_the_evaluation_and_the_config(trained):
    card = (trained / "final" / "README.md").read_text()
    _, front, body = card.split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "transformers" and meta["tags"] == ["posttrain", "sft", "full-fine-tuning"]
    assert "base_model" not in meta  # the tiny test model is nobody's hub model
    evaluation = json.loads((trained / "evaluation.json").read_text())
    perplexity = evaluation["metrics"]["perplexity"]["value"]
    row = next(line for line in body.splitlines() if line.startswith("| perplexity |"))
    assert row == (f"| perplexity | {evaluation['baseline']['perplexity']:.4g} | {perplexity:.4g} | "
                   f"{evaluation['metrics']['perplexity']['n_tokens']} |")
    reproduce = body.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(reproduce) == json.loads((trained / "config.json").read_text())
    assert "- torch " in body and "- transformers " in body


def test_the_embedded_model_is_named_by_its_hub_id_and_license():
    assert base_model_identity("smollm2-135m-instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")


def test_push_uploads_the_folder_as_it_is(trained, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Commit", (), {"commit_url": f"https://hf.co/{kwargs['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert main(["push", "--model", str(trained / "final"), "--repo", "me/tiny-sft", "--private"]) == 0
    assert calls[0] == ("create_repo", "me/tiny-sft", {"private": True, "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(trained / "final") and calls[1][1]["repo_id"] == "me/tiny-sft"
    assert "https://hf.co/me/tiny-sft/commit/1" in capsys.readouterr().out
    assert main(["push", "--model", str(trained), "--repo", "me/tiny-sft"]) == 2  # the run folder, not final/
    assert "is a run folder: push its final/" in capsys.readouterr().err
