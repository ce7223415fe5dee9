"""``posttrain pipeline configs/rlhf.yaml``: training stages in order, each reading the folders of the stages before it.

    output_dir: runs/rlhf
    stages:
      - name: sft                                   # -> runs/rlhf/sft
        config: configs/sft.yaml
        overrides: {max_steps: 40}                  # key: value, dotted keys reach into sections
      - name: reward
        config: configs/reward.yaml
        overrides: {model: "{sft}"}                 # {sft}: the sft stage's trained model folder
      - name: ppo
        config: configs/ppo.yaml
        overrides: {model: "{sft}", reward_model: "{reward}"}
      - name: pairs                                 # AI-labelled preference pairs (posttrain.rollout.label)
        label: configs/label.yaml
        overrides: {model: "{ppo}"}                 # {pairs} in a later stage: its pairs.jsonl; with a judge
                                                    # {constitution: FILE}: RL-CAI's pairs (configs/constitutional.yaml)
      - name: revisions                             # critique -> revise (SL-CAI, posttrain.rollout.critique_revise)
        constitution: configs/constitution_sl.yaml  # {revisions} in a later stage: its sft.jsonl
      - name: evaluation
        evaluate: {model: "{ppo}", suite: default}  # posttrain.api.evaluate(...) -> runs/rlhf/evaluation/

A stage is complete when its ``evaluation.json`` exists (trainers write it last, after ``final/``; an evaluation
stage's must also say ``status: complete``); complete stages
are skipped, a stage with checkpoints resumes from the newest, any other starts clean. So an interrupted pipeline
run again goes on where it stopped.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from posttrain.config import apply_overrides, read_config_file
from posttrain.errors import ConfigError

log = logging.getLogger(__name__)

STAGE_KEYS = {"name", "config", "overrides", "evaluate", "label", "constitution"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w-]*)\}")


def run_pipeline(path: str | Path, overrides: list[str] | None = None) -> dict[str, dict]:
    """Run (or resume) every stage of the pipeline file ``path``; returns each stage's evaluation."""
    from posttrain.api import constitution, label, train

    source = str(path)
    spec = apply_overrides(read_config_file(path), overrides or [], source=f"{source} (overrides)")
    output_dir = Path(spec.get("output_dir", "runs/pipeline"))
    stages = check_stages(spec.get("stages"), source)
    results: dict[str, dict] = {}
    for stage in stages:
        name, stage_dir = stage["name"], output_dir / stage["name"]
        where = f"{source}: stage {name!r}"
        done = complete_evaluation(stage_dir / "evaluation.json")
        if done is not None:
            log.warning("%s: complete (%s), skipped", where, stage_dir / "evaluation.json")
            results[name] = done
            continue
        if "evaluate" in stage:
            from posttrain.api import evaluate

            options = substitute(dict(stage["evaluate"]), results, where)
            results[name] = evaluate(**options, out=stage_dir / "evaluation.json")
            continue
        resume = (stage_dir / "checkpoints").is_dir() and any((stage_dir / "checkpoints").glob("step_*/trainer_state.json"))
        stage_overrides = substitute(dict(stage.get("overrides") or {}), results, where)
        stage_overrides.update(output_dir=str(stage_dir), overwrite_output_dir=not resume)
        if "config" in stage:  # a label stage has no checkpoints to resume from
            stage_overrides["resume_from"] = None
        config = apply_overrides(read_config_file(stage.get("config") or stage.get("label") or stage["constitution"]),
                                 [f"{key}={json.dumps(value)}" for key, value in stage_overrides.items()],
                                 source=f"{where} overrides")
        log.warning("%s: %s", where, f"resuming in {stage_dir}" if resume else f"training into {stage_dir}")
        run = label if "label" in stage else constitution if "constitution" in stage else train
        results[name] = run(config)
    return results


def check_stages(stages, source: str) -> list[dict]:
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{source}: `stages` must be a non-empty list of stages (name + config, or name + evaluate)")
    names: list[str] = []
    for i, stage in enumerate(stages):
        where = f"{source}: stages[{i}]"
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str) or not stage["name"]:
            raise ConfigError(f"{where}: each stage needs a `name`")
        unknown = sorted(set(stage) - STAGE_KEYS)
        if unknown:
            raise ConfigError(f"{where} ({stage['name']}): unknown key(s) {', '.join(unknown)}; "
                              f"expected {', '.join(sorted(STAGE_KEYS))}")
        if sum(key in stage for key in ("config", "evaluate", "label", "constitution")) != 1:
            raise ConfigError(f"{where} ({stage['name']}): give one of `config` (a training stage), `evaluate` or "
                              "`label` (a label config: AI-judged preference pairs) or `constitution` (SL-CAI)")
        for key in ("config", "label", "constitution"):
            if key in stage and not Path(stage[key]).is_file():
                raise ConfigError(f"{where} ({stage['name']}): {key} file {stage[key]!r} not found")
        if stage["name"] in names:
            raise ConfigError(f"{where}: stage name {stage['name']!r} is used twice")
        text = json.dumps({k: v for k, v in stage.items() if k in ("overrides", "evaluate")})
        for reference in _PLACEHOLDER.findall(text):
            if reference not in names:
                raise ConfigError(f"{where} ({stage['name']}): {{{reference}}} names no earlier stage "
                                  f"(earlier: {', '.join(names) or 'none'})")
        names.append(stage["name"])
    return stages


def complete_evaluation(path: Path) -> dict | None:
    """A stage's evaluation.json, when the stage finished: a trainer writes it last; the harness writes it after
    every metric with ``status: running`` until the last one, so an interrupted evaluation stage is run again."""
    if not path.is_file():
        return None
    evaluation = json.loads(path.read_text())
    return None if evaluation.get("status", "complete") != "complete" else evaluation


def stage_model(evaluation: dict) -> str:
    """What a later stage reads: a reward run's ``reward_model``, a label stage's ``data`` (the pairs or SFT rows it
    wrote), else the trained model (``final/``)."""
    return evaluation.get("reward_model") or evaluation.get("data") or evaluation["final_model"]


def substitute(options: dict, results: dict[str, dict], where: str) -> dict:
    """Replace ``{stage}`` in string values by that stage's model folder."""
    def fill(value):
        if isinstance(value, str):
            return _PLACEHOLDER.sub(lambda m: stage_model(results[m[1]]), value)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return {key: fill(value) for key, value in options.items()}
