"""report_to: every tracker gets the records log_history.jsonl carries, offline, and a resumed run continues the
same tracker run. Each backend is read back with its own reader, not with ours."""

import json
import sys
from pathlib import Path

import pytest

from posttrain.api import train
from posttrain.data.synthetic import arithmetic_sft
from posttrain.engine.run_log import read_jsonl


def _config(tmp_path, write_jsonl, **overrides):
    train_rows, eval_rows = arithmetic_sft(n_train=32, n_eval=8, seed=1)
    config = {
        "method": "sft", "model": "tiny", "output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 4,
        "learning_rate": 1e-3, "logging_steps": 2, "eval_steps": 2, "progress_bar": False,
        "data": {"path": str(write_jsonl("train.jsonl", train_rows)),
                 "eval_path": str(write_jsonl("eval.jsonl", eval_rows)), "max_length": 64},
    }
    config.update(overrides)
    return config


def _losses(records):
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_every_tracker_gets_the_logged_records_offline(tmp_path, write_jsonl, monkeypatch):
    assert "trackio" not in sys.modules, "trackio reads TRACKIO_DIR once, at import"
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    evaluation = train(_config(tmp_path, write_jsonl, report_to=["jsonl", "tensorboard", "wandb", "trackio", "mlflow"]))
    run = tmp_path / "run"
    logged = _losses(read_jsonl(run / "log_history.jsonl"))
    evals = {r["step"]: r["eval_loss"] for r in read_jsonl(run / "log_history.jsonl") if "eval_loss" in r}
    assert sorted(logged) == [2, 4] and sorted(evals) == [0, 2, 4]
    ids = json.loads((run / "trackers.json").read_text())

    # TensorBoard: its own event reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(logged, rel=1e-6)
    assert {e.step: e.value for e in events.Scalars("eval_loss")} == pytest.approx(evals, rel=1e-6)
    assert "learning_rate" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()

    # MLflow: its client on the file store; the config's keys as params, the end-of-run figures as final/*
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "loss")}
    assert history == pytest.approx(logged, rel=1e-6)
    mlflow_run = client.get_run(ids["mlflow"])
    assert mlflow_run.data.params["lora.enabled"] == "False" and mlflow_run.data.params["max_steps"] == "4"
    assert mlflow_run.data.metrics["final/perplexity"] == pytest.approx(evaluation["metrics"]["perplexity"]["value"])

    # trackio: its local SQLite store
    from trackio import SQLiteStorage

    rows = SQLiteStorage.get_logs("posttrain", ids["trackio"])
    assert {r["step"]: r["loss"] for r in rows if "loss" in r} == pytest.approx(logged, rel=1e-6)

    # wandb offline: the run's record log (protobuf records; its reader lives in wandb's Go core), one file per
    # process that logged into the run: training, then the end-of-run evaluation
    logs = b"".join(p.read_bytes() for p in (run / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb"))
    for step, loss in logged.items():
        assert json.dumps(loss).encode() in logs, (step, loss)
    assert b"final/perplexity" in logs and b"learning_rate" in logs


def test_a_resumed_run_continues_its_tracker_run(tmp_path, write_jsonl, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = _config(tmp_path, write_jsonl, report_to="mlflow", save_steps=2)

    def crash_after_step_3(engine, state):
        if state["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[crash_after_step_3])
    first_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]
    train(config)  # the same output_dir: resumes from the checkpoint of step 2
    assert json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"] == first_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(m.step for m in client.get_metric_history(first_id, "loss")) == [2, 4]
    assert len(client.search_runs([client.get_run(first_id).info.experiment_id])) == 1


def test_an_unknown_tracker_is_refused_by_name(tmp_path, write_jsonl):
    from posttrain.errors import ConfigError

    with pytest.raises(ConfigError, match="report_to.*'wandb'"):
        train(_config(tmp_path, write_jsonl, report_to=["wandbb"]))
    assert not Path(tmp_path / "run").exists()
