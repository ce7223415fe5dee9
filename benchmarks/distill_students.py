"""Issue 23's table: pruned students of the embedded model taught by a trained teacher, four ways, at equal steps and
at equal wall time.

For each student (the embedded model depth-pruned by block influence, ``posttrain prune``) and each arm:

    sft       SFT on the data's reference answers                         configs/sft.yaml
    seq_kd    SFT on the teacher's greedy completions (Kim & Rush 2016)   configs/gkd.yaml, lmbda 0, seq_kd, alpha 0
    logit_kd  alpha * KL(teacher || student) + (1 - alpha) * CE           configs/distill.yaml
    gkd       on-policy generalized JSD (Agarwal et al. 2024)             configs/gkd.yaml

every arm trains ``--steps`` steps at one constant learning rate (after a short warmup), so a run's first k steps are
exactly a k-step run. The SFT run then goes on until it has used as much training time as each distillation arm
took, saving its weights at each of those times: the equal-wall-time rows. Training time is the loop's wall time
(teacher forwards and generation included, model loading and our weight saves excluded; the first step is counted as
long as the second). One arm runs at a time in its own process, on an otherwise idle machine.

Each resulting model is scored with ``configs/eval_merge.yaml``'s accuracy and perplexity (200 held-out two-digit
problems, greedy; perplexity of 48 held-out references), the suite the teacher and the base model were scored with
in docs/results.md; greedy generation tokens/s is measured once per depth (batch 1 and 16, 32 new tokens, median of
3 interleaved repeats). Resumable: finished runs and evaluations are kept and skipped.

    python benchmarks/distill_students.py --teacher runs/teacher/grpo/final --out runs/s5/students --steps 120
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {  # name -> (config, overrides); learning rate and schedule are common, see common_overrides
    "seq_kd": ("configs/gkd.yaml", {"lmbda": 0.0, "seq_kd": True, "alpha": 0.0, "generation_temperature": 0.0}),
    "logit_kd": ("configs/distill.yaml", {}),
    "gkd": ("configs/gkd.yaml", {}),
    "sft": ("configs/sft.yaml", {}),
}
DISTILL_ARMS = ("seq_kd", "logit_kd", "gkd")
SUITE = {"name": "students", "metrics": [
    {"metric": "task_accuracy", "name": "arithmetic", "task": "arithmetic",
     "task_options": {"digits": 2, "operations": "+-"}, "n": 200, "max_new_tokens": 64},
    {"metric": "perplexity", "name": "perplexity", "limit": 48}]}


def common_overrides(student: Path, teacher: str, steps: int, learning_rate: float, out_dir: Path) -> dict:
    return {"model": str(student), "teacher": teacher, "output_dir": str(out_dir), "max_steps": steps,
            "learning_rate": learning_rate, "lr_schedule": "constant", "warmup_steps": 5, "logging_steps": 10,
            "eval_steps": None, "save_steps": None, "eval_on_start": False, "progress_bar": False}


class Clock:
    """Engine callback: training time at every step (our weight saves left out). Records step ``steps``; with
    target times (name -> seconds) it also saves the weights to ``at_<name>`` when training time first reaches each
    and to ``at_steps`` at step ``steps``, and stops the run once all are reached."""

    def __init__(self, steps: int, targets: dict[str, float], out_dir: Path):
        self.steps, self.targets, self.out_dir = steps, dict(targets), out_dir
        self.saving = bool(targets)
        self.stamps: list[float] = []  # perf_counter after each step, saves subtracted
        self.reached: dict[str, dict] = {}  # "steps" and each target's name -> its step and training time
        self.save_seconds = 0.0

    def elapsed(self) -> float:
        """Training time so far, the first step counted as long as the second."""
        first = self.stamps[1] - self.stamps[0] if len(self.stamps) > 1 else 0.0
        return self.stamps[-1] - self.stamps[0] + first

    def _reach(self, name: str, engine, step: int) -> None:
        self.reached[name] = {"step": step, "train_s": self.elapsed()}
        if self.saving:
            started = time.perf_counter()
            engine.save_model(self.out_dir / f"at_{name}")
            self.save_seconds += time.perf_counter() - started

    def __call__(self, engine, state: dict) -> None:
        self.stamps.append(time.perf_counter() - self.save_seconds)
        for name, seconds in list(self.targets.items()):
            if len(self.stamps) > 1 and self.elapsed() >= seconds:
                self._reach(name, engine, state["step"])
                del self.targets[name]
        if state["step"] == self.steps:
            self._reach("steps", engine, state["step"])
        if self.saving and not self.targets and "steps" in self.reached:
            state["stopped"] = "all target times reached"


def worker(args) -> None:
    """One training run in this process; writes timing.json beside its output."""
    from posttrain.api import train

    config, overrides = ARMS[args.worker]
    out_dir = Path(args.run_dir)
    clock = Clock(args.steps, json.loads(args.targets), out_dir)
    # with target times the run goes on until the last one; the step count is then only an upper bound
    steps = 100_000 if clock.saving else args.steps
    settings = {**common_overrides(Path(args.student), args.teacher, steps, args.learning_rate, out_dir), **overrides}
    if args.worker == "sft":
        settings.pop("teacher")
    train(str(ROOT / config), [f"{key}={json.dumps(value)}" for key, value in settings.items()], callbacks=[clock])
    steps_reached = clock.reached.pop("steps")
    timing = {"arm": args.worker, "steps_run": len(clock.stamps), "train_s": clock.elapsed(), "steps": steps_reached,
              "saved": clock.reached}
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=1))


def run(cmd: list[str], log: Path) -> None:
    with log.open("w") as stream:
        if subprocess.run(cmd, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
            sys.exit(f"failed: {' '.join(cmd)} (log: {log})")


def evaluate(model: Path, out: Path, suite: Path) -> dict:
    if not out.exists():
        run([sys.executable, "-m", "posttrain", "eval", "--model", str(model), "--suite", str(suite),
             "--out", str(out)], out.with_suffix(".log"))
    metrics = json.loads(out.read_text())["metrics"]
    return {name: metrics[key]["value"] for name, key in (("accuracy", "arithmetic/accuracy"), ("perplexity", "perplexity"))}


def generation_speed(models: dict[str, str], repeats: int) -> dict[str, dict]:
    """Greedy tokens/s per model at batch 1 and 16, medians of interleaved repeats."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quantized_generation import tokens_per_s

    from posttrain.models import load_model

    loaded = {name: load_model(path, "float32", "cpu") for name, path in models.items()}
    runs = {(name, batch): [] for name in models for batch in (1, 16)}
    for _ in range(repeats):
        for name, (model, tokenizer) in loaded.items():
            for batch in (1, 16):
                runs[name, batch].append(tokens_per_s(model, tokenizer, batch, 32))
    return {name: {f"batch_{b}": statistics.median(runs[name, b]) for b in (1, 16)} for name in models}


def train_arms(args, student: Path, out: Path, layers: int) -> dict[str, dict]:
    """Each arm's run (skipped when its timing.json exists); the SFT run last, with the others' times as targets."""
    timings = {}
    for arm in (*DISTILL_ARMS, "sft"):
        run_dir = out / f"s{layers}_{arm}"
        if not (run_dir / "timing.json").exists():
            targets = {name: timings[name]["train_s"] for name in DISTILL_ARMS} if arm == "sft" else {}
            print(f"{layers} layers, {arm}: training", flush=True)
            run([sys.executable, __file__, "--worker", arm, "--student", str(student), "--run-dir", str(run_dir),
                 "--teacher", args.teacher, "--steps", str(args.steps), "--learning-rate", str(args.learning_rate),
                 "--targets", json.dumps(targets)], out / f"s{layers}_{arm}.log")
        timings[arm] = json.loads((run_dir / "timing.json").read_text())
    return timings


def models_to_score(student: Path, out: Path, layers: int, timings: dict) -> dict[str, tuple[Path, dict]]:
    """Row name -> (model folder, its step and training time): the untrained student, every arm at equal steps,
    and the SFT run at each distillation arm's training time."""
    rows = {"pruned": (student, {"train_s": 0.0, "step": 0})}
    for arm in DISTILL_ARMS:
        rows[arm] = (out / f"s{layers}_{arm}" / "final", timings[arm]["steps"])
    sft = timings["sft"]
    rows["sft"] = (out / f"s{layers}_sft" / "at_steps", sft["steps"])
    for arm in DISTILL_ARMS:
        rows[f"sft_at_{arm}_time"] = (out / f"s{layers}_sft" / f"at_{arm}", sft["saved"][arm])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/teacher/grpo/final")
    parser.add_argument("--out", default="runs/students")
    parser.add_argument("--layers", default="15,10", help="student depths, comma-separated")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--student", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--targets", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suite = out / "suite.json"
    suite.write_text(json.dumps(SUITE))
    table = {}
    for layers in [int(n) for n in args.layers.split(",")]:
        student = out / f"student{layers}"
        if not (student / "config.json").exists():
            run([sys.executable, "-m", "posttrain", "prune", "--model", "smollm2-135m-instruct", "--keep-layers",
                 str(layers), "--out", str(student)], out / f"prune{layers}.log")
        timings = train_arms(args, student, out, layers)
        for name, (model, timing) in models_to_score(student, out, layers, timings).items():
            print(f"{layers} layers, {name}: evaluating", flush=True)
            scores = evaluate(model, out / f"eval_s{layers}_{name}.json", suite)
            table[f"{layers}/{name}"] = {"steps": timing["step"], "train_s": round(timing["train_s"], 1), **scores}
            print(json.dumps({f"{layers}/{name}": table[f"{layers}/{name}"]}), flush=True)
    speed_file = out / "generation_speed.json"
    if not speed_file.exists():
        models = {"teacher (30 layers)": args.teacher,
                  **{f"student {n}": str(out / f"student{n}") for n in args.layers.split(",")}}
        speed_file.write_text(json.dumps(generation_speed(models, args.speed_repeats), indent=1))
    (out / "table.json").write_text(json.dumps({"rows": table, "generation_tokens_per_s":
                                                json.loads(speed_file.read_text())}, indent=1))
    print((out / "table.json").read_text())


if __name__ == "__main__":
    main()
