"""The SIGKILL campaign: run a preset (shrunk to the tiny model, presets.py) in a child process, kill it with
SIGKILL at a random moment of its training, run the same command again (it resumes from its last complete
checkpoint), and so on, then let it finish. The finished run must log the same numbers and end with the same
weights as the uninterrupted run recorded in presets_golden.json, and no checkpoint it left may be unreadable.

    .venv/bin/python tests/invariants/sigkill.py --kills 5 sft dpo grpo_kl_iterations reinforce ppo --pipeline

prints one line per preset (kills that landed, restarts, checkpoints checked, equal or not) and exits 1 if any run
differs. ``--pipeline`` also kills a pipeline (SFT -> DPO on SFT's model) and compares every stage with the same
pipeline run without kills. ``tests/invariants/test_sigkill.py`` runs it on one preset in CI; docs/reliability.md has a full campaign.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from presets import GOLDEN, record  # noqa: E402

CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, {here!r})
from presets import record
reward = {reward!r}
result = record({name!r}, Path({workdir!r}), reward_model=Path(reward) if reward else None, overwrite=False)
Path({out!r}).write_text(json.dumps(result))
"""


def log_lines(root: Path) -> int:
    """Lines logged so far by every run under ``root`` (a preset's folder, or a pipeline's stages)."""
    return sum(len(path.read_text().splitlines()) for path in root.rglob("log_history.jsonl"))


def kill_and_resume(code: str, root: Path, kills: int, rng: random.Random, window_s: float = 1.5) -> dict:
    """Run ``code`` in a child process; while it trains under ``root``, SIGKILL it ``kills`` times (each after a
    random moment once it has logged a step), starting it again each time; then let it finish."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    landed, attempts, checkpoints_seen = 0, 0, set()
    while True:
        attempts += 1
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        if landed < kills:
            before = log_lines(root)
            while child.poll() is None and log_lines(root) <= before:  # wait for training to log a step
                time.sleep(0.05)
            time.sleep(rng.uniform(0, window_s))
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                landed += 1
        _, stderr = child.communicate()
        for run in {path.parent.parent for path in root.rglob("checkpoints/*")}:
            checkpoints_seen |= check_checkpoints(run)
        if child.returncode == 0:
            return {"kills": landed, "attempts": attempts, "checkpoints_checked": len(checkpoints_seen)}
        if child.returncode != -signal.SIGKILL:
            raise RuntimeError(f"the run failed on attempt {attempts}:\n{stderr[-3000:]}")


def campaign(name: str, workdir: Path, kills: int, rng: random.Random, reward_model: Path | None = None) -> dict:
    """A preset under kills; its result in presets.record's form."""
    out = workdir / f"{name}.result.json"
    code = CHILD.format(here=str(HERE), name=name, workdir=str(workdir), reward=str(reward_model or ""), out=str(out))
    outcome = kill_and_resume(code, workdir / name, kills, rng)
    return {**outcome, "result": json.loads(out.read_text())}


def pipeline_result(root: Path) -> dict:
    """Each stage's logged numbers, evaluation and tensors, with the pipeline's folder written as ROOT."""
    from presets import _jsonl, _numbers, fingerprint

    result = {stage.name: {"log_history": _jsonl(stage / "log_history.jsonl"),
                           "evaluation": _numbers(json.loads((stage / "evaluation.json").read_text())),
                           "final": fingerprint(stage / "final")} for stage in sorted(root.iterdir()) if stage.is_dir()}
    return json.loads(json.dumps(result).replace(str(root), "ROOT"))


def pipeline_campaign(workdir: Path, kills: int, rng: random.Random) -> dict:
    """SFT -> DPO from its model (presets shrunk to the tiny model), uninterrupted and under kills."""
    from presets import _SMALL, OVERRIDES, ROOT

    def stage(name: str, preset: str, **extra) -> dict:
        return {"name": name, "config": str(ROOT / "configs" / f"{preset}.yaml"),
                "overrides": {**_SMALL, **OVERRIDES[preset], **extra}}

    results = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for run in ("uninterrupted", "killed"):
        spec = {"output_dir": str(workdir / run), "stages": [stage("sft", "sft"), stage("dpo", "dpo", model="{sft}")]}
        (workdir / f"{run}.json").write_text(json.dumps(spec))
        code = (f"from posttrain.pipeline import run_pipeline\nimport torch\ntorch.set_num_threads(1)\n"
                f"run_pipeline({str(workdir / f'{run}.json')!r})")
        outcome = kill_and_resume(code, workdir / run, kills if run == "killed" else 0, rng)
        results[run] = {**outcome, "result": pipeline_result(workdir / run)}
    return results


def check_checkpoints(run: Path) -> set[str]:
    """Every complete checkpoint left on disk loads (its state, its tensors); returns their names."""
    from safetensors.torch import load_file

    from posttrain.engine.checkpoint import STATE_FILE, list_checkpoints

    seen = set()
    for checkpoint in list_checkpoints(run / "checkpoints"):
        json.loads((checkpoint / STATE_FILE).read_text())
        for tensors in checkpoint.glob("*.safetensors"):
            load_file(tensors)
        seen.add(f"{checkpoint.name}:{(checkpoint / STATE_FILE).stat().st_mtime_ns}")
    return seen


def main(argv: list[str] | None = None) -> int:
    from test_presets_unchanged import assert_same

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="*")
    parser.add_argument("--pipeline", action="store_true", help="also a pipeline (SFT -> DPO) under kills")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per preset before it may finish")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    golden, rng, failed = json.loads(GOLDEN.read_text()), random.Random(args.seed), 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        reward_model = None
        if "ppo" in args.presets:  # PPO's reward model: the reward preset, trained once without kills
            record("reward", workdir / "for_ppo")
            reward_model = workdir / "for_ppo" / "reward" / "final"
        for name in args.presets:
            started = time.perf_counter()
            outcome = campaign(name, workdir, args.kills, rng, reward_model if name == "ppo" else None)
            try:
                assert_same(outcome["result"], golden[name], name)
                verdict = "same logs and weights as the uninterrupted run"
            except AssertionError as exc:
                verdict, failed = f"DIFFERS: {exc}", failed + 1
            print(f"{name}: {outcome['kills']} kills, {outcome['attempts']} runs, {outcome['checkpoints_checked']} "
                  f"checkpoints loaded; {verdict} ({time.perf_counter() - started:.0f} s)", flush=True)
        if args.pipeline:
            started = time.perf_counter()
            outcome = pipeline_campaign(workdir / "pipeline", args.kills, rng)
            killed = outcome["killed"]
            try:
                assert_same(killed["result"], outcome["uninterrupted"]["result"], "pipeline")
                verdict = "same logs and weights in every stage as the uninterrupted pipeline"
            except AssertionError as exc:
                verdict, failed = f"DIFFERS: {exc}", failed + 1
            print(f"pipeline sft -> dpo: {killed['kills']} kills, {killed['attempts']} runs, "
                  f"{killed['checkpoints_checked']} checkpoints loaded; {verdict} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
