"""``posttrain eval`` end to end on the tiny model, as a user runs it."""

import json

import pytest
import torch
import yaml

from posttrain.cli import main
from posttrain.eval.suite import BUILTIN_SUITES
from posttrain.models import LoraSettings, apply_lora, build_tiny_model, save_model


def test_eval_tiny_model_with_the_quick_suite(tmp_path, capsys):
    out = tmp_path / "baseline.json"
    assert main(["eval", "--model", "tiny", "--suite", "quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "arithmetic/pass@2" in printed and f"wrote {out}" in printed
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and result["suite"]["name"] == "quick" and result["status"] == "complete"
    assert result["entries"]["kl"]["status"] == "skipped"  # the tiny model has no base to compare with
    assert {"perplexity", "verbosity/words_mean", "reward", "arithmetic/accuracy", "preference_accuracy",
            "probes/longer/reward_delta"} <= set(result["metrics"])
    samples = [json.loads(line) for line in (tmp_path / "baseline_samples.jsonl").read_text().splitlines()]
    probes = [s for s in samples if s["metric"] == "probes"]
    assert len(probes) == 30 and {s["variant"] for s in probes} == {"plain", "padded", "flattery", "longer", "keywords"}
    assert main(["compare", str(out), str(out), "--fail-on-regression"]) == 0


def test_eval_a_lora_run_folder_against_its_base(tmp_path, tokenizer, capsys):
    model = apply_lora(build_tiny_model(), LoraSettings(r=4, dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)) * 0.5
    final = save_model(model, tokenizer, tmp_path / "run" / "final", base_spec="tiny")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "lora-check", "metrics": [
        {"metric": "kl", "limit": 3, "max_new_tokens": 8},
        {"metric": "win_rate", "judge": {"llm": "tiny"}, "limit": 3, "max_new_tokens": 8},
        {"metric": "preference_accuracy", "limit": 4},
    ]}))
    assert main(["eval", "--model", str(final), "--suite", str(suite)]) == 0
    result = json.loads((final / "evaluation.json").read_text())  # next to the model by default
    assert result["entries"]["kl"]["details"]["reference"] == "tiny (adapters off)"
    assert result["metrics"]["kl"]["value"] > 0
    assert result["entries"]["preference_accuracy"]["details"]["reward"] == "dpo"
    assert 0 <= result["metrics"]["win_rate"]["value"] <= 1
    assert main(["compare", str(tmp_path / "run")]) == 0  # a run folder: its final/evaluation.json
    assert "win_rate ↑" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--model", "tiny"], "--out is required when the model is not a folder"),
    (["--model", "tiny", "--suite", "nightly", "--out", "x.json"], "unknown suite 'nightly'"),
    (["--model", "{tmp}/notes.txt", "--out", "x.json"], "is a file, not a model"),
])
def test_eval_refuses_bad_input_with_a_clear_message(arguments, message, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["eval", *[a.format(tmp=tmp_path) for a in arguments]]) == 2
    assert message in capsys.readouterr().err


def test_eval_exits_1_when_a_metric_failed(tmp_path, capsys):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"metrics": [{"metric": "perplexity", "data": str(tmp_path / "nope.jsonl")}]}))
    assert main(["eval", "--model", "tiny", "--suite", str(suite), "--out", str(tmp_path / "e.json")]) == 1
    captured = capsys.readouterr()
    assert "perplexity: failed" in captured.err and "nope.jsonl" in captured.out


def test_a_training_run_ends_with_the_harness_when_eval_suite_is_set(tmp_path, write_jsonl, capsys):
    """``eval_suite``: the trainer runs the harness on its trained model; ``compare RUN`` reads that evaluation, and
    ``RUN@baseline`` still the trainer's step-0 values. The reference is the model the run started from."""
    from posttrain.api import train
    from posttrain.data.synthetic import arithmetic_sft

    train_rows, eval_rows = arithmetic_sft(n_train=16, n_eval=8, seed=5)
    run = tmp_path / "run"
    quick = [dict(entry, judge={"llm": "tiny"}) if entry == "win_rate" or entry.get("metric") == "win_rate"
             else entry for entry in (e if isinstance(e, dict) else {"metric": e} for e in BUILTIN_SUITES["quick"])]
    suite = tmp_path / "quick_tiny_judge.yaml"
    suite.write_text(yaml.safe_dump({"name": "quick-tiny-judge", "metrics": quick}))
    config = {"method": "sft", "model": "tiny", "output_dir": str(run), "max_steps": 2, "batch_size": 4,
              "learning_rate": 1e-2, "progress_bar": False, "seed": 3, "eval_suite": str(suite),
              "data": {"path": str(write_jsonl("train.jsonl", train_rows)),
                       "eval_path": str(write_jsonl("eval.jsonl", eval_rows)), "max_length": 64}}
    evaluation = train(config)
    assert evaluation["suite_evaluation"]["path"] == "final/evaluation.json"
    assert json.loads((run / "evaluation.json").read_text())["suite_evaluation"]["suite"] == "quick-tiny-judge"
    result = json.loads((run / "final" / "evaluation.json").read_text())
    assert result["model"] == str(run / "final") and result["status"] == "complete" and not result["failed_metrics"]
    assert result["seed"] == 0  # the harness's default, not the run's seed: comparable with a `posttrain eval`
    # a full fine-tune's base is the run's `model`: KL and win rate run against it, and the weights moved
    assert result["entries"]["kl"]["details"]["reference"] == "tiny" and result["metrics"]["kl"]["value"] > 0
    assert result["entries"]["win_rate"]["details"]["baseline"] == "tiny"
    assert result["entries"]["preference_accuracy"]["details"]["reward"] == "dpo"
    # the in-memory evaluation equals a later `posttrain eval` of the saved final/ (same seed, same suite)
    again = tmp_path / "again.json"
    assert main(["eval", "--model", str(run / "final"), "--suite", str(suite), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["metrics"] == result["metrics"]
    capsys.readouterr()
    # RUN reads the harness's file; RUN@trainer and RUN@baseline the trainer's own, after and at step 0
    assert main(["compare", f"{run}@baseline", f"{run}@trainer"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "perplexity" in rows and "kl" not in rows and "arithmetic/pass@2" not in rows
    assert main(["compare", str(again), str(run)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "kl" in rows and "arithmetic/pass@2" in rows


def test_a_bad_eval_suite_stops_the_run_before_training(tmp_path):
    from posttrain.api import train
    from posttrain.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_suite: unknown suite 'nightly'"):
        train({"method": "sft", "model": "tiny", "output_dir": str(tmp_path / "run"), "eval_suite": "nightly",
               "data": {"path": str(tmp_path / "never_read.jsonl")}})
    assert not (tmp_path / "run").exists()
