import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from posttrain.api import build_method_config, train
from posttrain.cli import main
from posttrain.data.synthetic import arithmetic_sft

ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _write_config(tmp_path, write_jsonl, suffix=".yaml", **overrides):
    train_rows, eval_rows = arithmetic_sft(n_train=64, n_eval=16, seed=5)
    config = {
        "method": "sft", "model": "tiny", "output_dir": str(tmp_path / "run"), "max_steps": 6,
        "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 2, "eval_steps": 3, "save_steps": 3,
        "progress_bar": False,
        "data": {"path": str(write_jsonl("train.jsonl", train_rows)), "eval_path": str(write_jsonl("eval.jsonl", eval_rows)),
                 "max_length": 96},
    }
    config.update(overrides)
    path = tmp_path / f"config{suffix}"
    path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
    return path


def test_cli_train_writes_the_output_contract(tmp_path, write_jsonl):
    path = _write_config(tmp_path, write_jsonl, suffix=".json")
    result = subprocess.run([sys.executable, "-m", "posttrain.cli", "train", str(path), "max_steps=6", "lora.r=4"],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run"
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["max_steps"] == 6 and resolved["lora"]["r"] == 4 and resolved["data"]["max_length"] == 96
    log = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    train_records = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6]
    assert all({"loss", "lr", "grad_norm", "tokens_per_s", "token_accuracy"} <= set(r) for r in train_records)
    assert [r["step"] for r in log if "eval_loss" in r] == [0, 3, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3", "step_6"]
    for name in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "trainer_state.json"):
        assert (out / "checkpoints" / "step_6" / name).is_file(), name
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["metrics"]["perplexity"]["value"] > 1 and evaluation["steps"] == 6
    assert json.loads(result.stdout)["metrics"] == evaluation["metrics"]


def test_final_reloads_in_plain_transformers_with_identical_logits(tmp_path, write_jsonl):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = {}
    train(str(_write_config(tmp_path, write_jsonl)), callbacks=[lambda engine, state: trained.update(model=engine.model)])
    final = tmp_path / "run" / "final"
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("What is 12 + 7?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained["model"](ids).logits, rtol=0, atol=0)


def test_rerun_into_finished_output_dir_refuses_clearly(tmp_path, write_jsonl, capsys):
    path = _write_config(tmp_path, write_jsonl, max_steps=2, eval_steps=None, save_steps=None)
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path)]) == 2
    assert "holds a finished run" in capsys.readouterr().err


def test_a_run_stopped_between_final_and_evaluation_finishes_on_rerun(tmp_path, write_jsonl):
    """final/ is written before evaluation.json: a crash between them must not leave the run stuck. It resumes from
    its last checkpoint (here the last step), logs nothing twice, and writes the evaluation an uninterrupted run
    writes."""
    path = _write_config(tmp_path, write_jsonl, max_steps=4, eval_steps=2, save_steps=2)
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    uninterrupted_log = (run / "log_history.jsonl").read_text()
    uninterrupted = json.loads((run / "evaluation.json").read_text())
    (run / "evaluation.json").unlink()
    assert main(["train", str(path)]) == 0
    assert (run / "log_history.jsonl").read_text() == uninterrupted_log
    assert json.loads((run / "evaluation.json").read_text())["metrics"] == uninterrupted["metrics"]


def test_config_errors_name_key_value_and_expectation(tmp_path, write_jsonl):
    path = _write_config(tmp_path, write_jsonl)
    with pytest.raises(Exception, match=r"unknown key 'learnin_rate'; did you mean 'learning_rate'"):
        build_method_config(str(path), ["learnin_rate=1e-4"])
    with pytest.raises(Exception, match=r"key 'max_steps' has value 'ten', expected an integer"):
        build_method_config(str(path), ["max_steps=ten"])
    with pytest.raises(Exception, match=r"key 'lora.r' has value 0, expected a value >= 1"):
        build_method_config(str(path), ["lora.r=0"])
    with pytest.raises(Exception, match=r"unknown key 'data.promt_column'; did you mean 'data.prompt_column'"):
        build_method_config(str(path), ["data.promt_column=q"])
    with pytest.raises(Exception, match=r"key 'lr_schedule' has value 'cosin', expected one of"):
        build_method_config(str(path), ["lr_schedule=cosin"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sft\nmodel: tiny\n  max_steps: 3\n")
    with pytest.raises(Exception, match=r"bad\.yaml:3: invalid YAML"):
        build_method_config(str(bad))


def test_exponent_notation_without_a_dot_is_a_number(tmp_path, write_jsonl):
    """PyYAML reads 2e-5 as a string (YAML 1.1 wants 2.0e-5); a float key takes it as the number it means, from an
    override and from a file. Other strings are still refused."""
    path = _write_config(tmp_path, write_jsonl)
    _, config = build_method_config(str(path), ["learning_rate=2e-5", "adam_epsilon=1E-8"])
    assert config.learning_rate == 2e-5 and config.adam_epsilon == 1e-8
    in_file = tmp_path / "exp.yaml"
    in_file.write_text(path.read_text() + "\nweight_decay: 1e-2\n")
    assert build_method_config(str(in_file))[1].weight_decay == 0.01
    with pytest.raises(Exception, match=r"key 'learning_rate' has value 'fast', expected a number"):
        build_method_config(str(path), ["learning_rate=fast"])
    with pytest.raises(Exception, match=r"key 'max_steps' has value '1e3', expected an integer"):
        build_method_config(str(path), ["max_steps=1e3"])


def test_cli_reports_errors_without_traceback(tmp_path, write_jsonl):
    path = _write_config(tmp_path, write_jsonl)
    result = subprocess.run([sys.executable, "-m", "posttrain.cli", "train", str(path), "batch_sise=4"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2
    assert "did you mean 'batch_size'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [[], ["train"], ["generate"], ["models"], ["demo"]])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "posttrain.cli", *command, "--help"], capture_output=True,
                            text=True, env=ENV, timeout=60)
    assert result.returncode == 0 and "usage: posttrain" in result.stdout


def test_shipped_presets_validate():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    from posttrain.trainers import METHODS

    # training presets (not the eval suites, pipelines, label and constitution configs: their own tests read those)
    presets = [c for c in configs if yaml.safe_load(c.read_text()).get("method") in METHODS]
    assert len(presets) > 5
    for preset in presets:
        _, config = build_method_config(str(preset))
        assert config.output_dir, preset
        assert not config.overwrite_output_dir, f"{preset}: a re-run after a crash must resume, not start over"
    from posttrain.config import build_config, read_config_file
    from posttrain.rollout.critique_revise import ConstitutionConfig
    from posttrain.rollout.label import LabelConfig

    others = {"label": LabelConfig, "constitution": ConstitutionConfig}
    for path in configs:
        data = yaml.safe_load(path.read_text())
        if data.get("method") in others:
            assert not build_config(others[data["method"]], read_config_file(path), str(path)).overwrite_output_dir
    for preset in ("configs/sft.yaml", "configs/sft_lora.yaml"):
        _, config = build_method_config(preset)
        assert config.model == "smollm2-135m-instruct"
    _, lora = build_method_config("configs/sft_lora.yaml")
    assert lora.lora.enabled
