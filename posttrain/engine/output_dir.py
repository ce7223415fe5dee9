"""The run's folder: resume from its newest complete checkpoint, refuse to write over a finished or foreign run, or
clear a previous run's outputs (only the names of the output contract, never anything else in the folder). What
interrupted writes left behind goes first; a run interrupted before its first checkpoint starts again."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from posttrain.engine.checkpoint import STATE_FILE, list_checkpoints
from posttrain.engine.run_log import LOG_FILE
from posttrain.errors import ConfigError
from posttrain.io import remove_temporary_files

log = logging.getLogger(__name__)

# the run's outputs that are not a method's own (Method.outputs, cleared with them). samples.jsonl, the shared name of a
# run's sample file, is always cleared, so a previous run's samples never sit beside a new run's figures
RUN_OUTPUTS = (LOG_FILE, "samples.jsonl", "evaluation.json", "checkpoints", "final", "best", "tensorboard", "wandb",
               "mlflow.db", "trackers.json")


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse, before anything loads, an output_dir that is a file, lies under a file, or cannot be created."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir {path} is a file; expected a folder (or a path where one can be made)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"output_dir {path} lies under {parent}, which is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"output_dir {path}: {parent} is not writable")
            return


def prepare_output_dir(output_dir: Path, resume_from: str | None, overwrite: bool,
                       method_outputs: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint to resume from (``resume_from``, or the newest in output_dir), or None for a fresh run."""
    for folder in (output_dir, output_dir / "checkpoints", output_dir / "final"):
        removed = remove_temporary_files(folder)
        if removed:
            log.warning("%s: removed what interrupted writes left: %s", folder, ", ".join(removed))
    if resume_from:
        resume = Path(resume_from)
        if not (resume / STATE_FILE).is_file():
            raise ConfigError(f"resume_from={resume}: not a complete checkpoint (no {STATE_FILE})")
        return resume
    if overwrite:
        clear_run_outputs(output_dir, method_outputs)
        return None
    if (output_dir / "evaluation.json").exists():  # written last: the run finished
        raise ConfigError(
            f"output_dir {output_dir} holds a finished run (evaluation.json exists); choose another output_dir or "
            "set overwrite_output_dir=true"
        )
    if (output_dir / "final").exists():  # stopped between final/ and evaluation.json: it finishes again
        log.warning("%s: a run that stopped after writing final/ but before evaluation.json; finishing it", output_dir)
    checkpoints = list_checkpoints(output_dir / "checkpoints")
    if checkpoints:
        return checkpoints[-1]
    ours = {"config.json", *RUN_OUTPUTS, *method_outputs}
    if output_dir.exists() and all(p.name in ours for p in output_dir.iterdir()):
        if any(p.name != "config.json" for p in output_dir.iterdir()):
            log.warning("%s: a run that stopped before its first checkpoint; starting it again", output_dir)
            clear_run_outputs(output_dir, method_outputs)
        return None
    if output_dir.exists():
        raise ConfigError(
            f"output_dir {output_dir} is not empty and holds no checkpoint to resume from; choose another "
            "output_dir or set overwrite_output_dir=true"
        )
    return None


def clear_run_outputs(output_dir: Path, method_outputs: tuple[str, ...] = ()) -> None:
    """Remove a previous run's outputs: the engine's and the method's, nothing else."""
    for name in (*RUN_OUTPUTS, *method_outputs):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
