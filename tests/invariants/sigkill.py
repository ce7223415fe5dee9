"""The SIGKILL campaign: run a preset (shrunk to the tiny model, presets.py) in a child process, kill it with
SIGKILL at a random moment of its training, run the same command again (it resumes from its last complete
checkpoint), and so on, then let it finish. The finished run must log the same numbers and end with the same
weights as the uninterrupted run recorded in presets_golden.json, and no checkpoint it left may be unreadable.

    .venv/bin/python tests/invariants/sigkill.py --kills 5 sft dpo grpo_kl_iterations reinforce ppo

prints one line per preset (kills that landed, restarts, checkpoints checked, equal or not) and exits 1 if any run
differs. ``tests/invariants/test_sigkill.py`` runs it on one preset in CI; docs/reliability.md has a full campaign.
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


def log_lines(run: Path) -> int:
    path = run / "log_history.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def campaign(name: str, workdir: Path, kills: int, rng: random.Random, reward_model: Path | None = None,
             window_s: float = 1.5) -> dict:
    """Kill the preset's run ``kills`` times while it trains, then let it finish; returns what happened."""
    out = workdir / f"{name}.result.json"
    code = CHILD.format(here=str(HERE), name=name, workdir=str(workdir), reward=str(reward_model or ""), out=str(out))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    landed, attempts, checkpoints_seen = 0, 0, set()
    while True:
        attempts += 1
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        if landed < kills:
            before = log_lines(workdir / name)
            while child.poll() is None and log_lines(workdir / name) <= before:  # wait for training to log a step
                time.sleep(0.05)
            time.sleep(rng.uniform(0, window_s))
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                landed += 1
        _, stderr = child.communicate()
        checkpoints_seen |= check_checkpoints(workdir / name)
        if child.returncode == 0:
            break
        if child.returncode != -signal.SIGKILL:
            raise RuntimeError(f"{name}: the run failed on attempt {attempts}:\n{stderr[-3000:]}")
    return {"result": json.loads(out.read_text()), "kills": landed, "attempts": attempts,
            "checkpoints_checked": len(checkpoints_seen)}


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
    parser.add_argument("presets", nargs="+")
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
