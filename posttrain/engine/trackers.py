"""Experiment trackers: the run's records mirrored to the tools people already watch (``report_to``).

``log_history.jsonl`` is always written (resume reads it back); each other backend gets the same records, with the
same keys and steps, plus the resolved config as the run's config, and tables (the samples a run writes). Every
backend is an optional extra, imported only when named, and each works offline: TensorBoard event files, wandb's
offline mode (``WANDB_MODE=offline``), trackio's local database, an MLflow SQLite store ``output_dir/mlflow.db``
unless ``MLFLOW_TRACKING_URI`` says otherwise.

A run keeps its tracker run ids in ``output_dir/trackers.json``, so a resumed run (or the end-of-run evaluation,
which opens the trackers again) continues the same tracker run instead of starting another.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

from posttrain.errors import require
from posttrain.io import atomic_write_text

TRACKER_IDS = "trackers.json"


class Tracker:
    """One backend: scalars per step, the config once, tables by name."""

    def log(self, record: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a record, without its step (booleans are not figures)."""
    return {name: value for name, value in record.items()
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def cell(value: Any) -> Any:
    """A table cell every backend accepts: numbers and strings as they are, anything else as JSON text."""
    return value if isinstance(value, (int, float, str)) or value is None else json.dumps(value)


class TensorBoardTracker(Tracker):
    def __init__(self, output_dir: Path, run_name: str, config: dict, ids: dict):
        require("tensorboard", "tensorboard", "report_to: tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"))
        if not ids.get("tensorboard"):  # the config once per run, not again on resume
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
            ids["tensorboard"] = run_name

    def log(self, record, step):
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, step)

    def log_table(self, name, rows, step):
        columns = table_columns(rows)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(cell(row.get(c, ""))).replace("|", "\\|").replace("\n", " ") for c in columns)
                  + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), step)

    def close(self):
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, output_dir: Path, run_name: str, config: dict, ids: dict):
        wandb = require("wandb", "trackers", "report_to: wandb")
        self.wandb = wandb
        ids.setdefault("wandb", uuid.uuid4().hex[:8])
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "posttrain"), name=run_name, id=ids["wandb"],
                              resume="allow", dir=str(output_dir), config=config)

    def log(self, record, step):
        self.run.log(scalars(record), step=step)

    def log_table(self, name, rows, step):
        columns = table_columns(rows)
        table = self.wandb.Table(columns=columns, data=[[cell(row.get(c)) for c in columns] for row in rows])
        self.run.log({name: table}, step=step)

    def close(self):
        self.run.finish()


class TrackioTracker(Tracker):
    def __init__(self, output_dir: Path, run_name: str, config: dict, ids: dict):
        self.trackio = require("trackio", "trackers", "report_to: trackio")
        ids.setdefault("trackio", run_name)
        self.run = self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "posttrain"), name=ids["trackio"],
                                     config=config, resume="allow", embed=False, auto_log_cpu=False,
                                     auto_log_gpu=False)

    def log(self, record, step):
        self.run.log(scalars(record), step=step)

    def log_table(self, name, rows, step):
        columns = table_columns(rows)
        frame = [{c: cell(row.get(c)) for c in columns} for row in rows]
        self.run.log({name: self.trackio.Table(data=[list(r.values()) for r in frame], columns=columns)}, step=step)

    def close(self):
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, output_dir: Path, run_name: str, config: dict, ids: dict):
        require("mlflow", "trackers", "report_to: mlflow")
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        if "mlflow" not in ids:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "posttrain")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=run_name)
            ids["mlflow"] = run.info.run_id
            for key, value in flatten(config).items():  # params are write-once: set when the run is created
                self.client.log_param(ids["mlflow"], key, str(value)[:6000])
        self.run_id = ids["mlflow"]

    def log(self, record, step):
        for name, value in scalars(record).items():
            self.client.log_metric(self.run_id, name, float(value), step=step)

    def log_table(self, name, rows, step):
        columns = table_columns(rows)
        data = {c: [cell(row.get(c)) for row in rows] for c in columns}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{name}_step{step}.json")

    def close(self):
        pass  # the run stays open: a resumed run (or the end-of-run evaluation) logs into it again


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 8}}`` -> ``{"lora.r": 8}``, the dotted keys ``key=value`` overrides use."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker,
            "mlflow": MlflowTracker}
TrackerName = Literal["jsonl", "tensorboard", "wandb", "trackio", "mlflow"]  # jsonl: log_history.jsonl, always written
assert set(get_args(TrackerName)) == {"jsonl", *TRACKERS}


def open_trackers(names: list[str], output_dir: Path, config: dict) -> list[Tracker]:
    """The trackers ``names`` asks for, continuing the tracker runs this output_dir started before."""
    output_dir = Path(output_dir)
    ids_path = output_dir / TRACKER_IDS
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    before = dict(ids)
    run_name = output_dir.resolve().name
    trackers = [TRACKERS[name](output_dir, run_name, config, ids) for name in dict.fromkeys(names) if name != "jsonl"]
    if ids != before:
        atomic_write_text(ids_path, json.dumps(ids, indent=2) + "\n")
    return trackers


def report_evaluation(names: list[str], output_dir: Path, config: dict, step: int, evaluation: dict,
                      samples: list[dict]) -> None:
    """The end-of-run evaluation into the same tracker runs: each figure of ``evaluation["metrics"]`` as the scalar
    ``final/<name>`` at ``step``, and the eval suite's samples as the table ``eval_samples``."""
    trackers = open_trackers(names, output_dir, config)
    figures = {f"final/{name}": entry["value"] for name, entry in evaluation.get("metrics", {}).items()
               if isinstance(entry, dict) and isinstance(entry.get("value"), (int, float))}
    for tracker in trackers:
        tracker.log(figures, step)
        if samples:
            tracker.log_table("eval_samples", samples, step)
        tracker.close()
