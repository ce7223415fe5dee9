"""``posttrain compare``: noise, directions, regressions and exit codes, every evaluation format, bad files."""

import csv
import json
import re

import pytest

from posttrain.cli import main
from posttrain.eval import compare, read_evaluation
from posttrain.eval.compare import parse_thresholds, probe_table


def metric(value, stderr, higher_is_better, n=400):
    return {"value": value, "n": n, "stderr": stderr, "higher_is_better": higher_is_better}


def write_evaluation(path, metrics, **extra):
    data = {"format": "posttrain.evaluation", "format_version": 1, "posttrain_version": "0.1.0", "model": "m",
            "seed": 0, "status": "complete", "metrics": metrics, "entries": {}, "samples": None, **extra}
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def runs(tmp_path):
    base = {"arithmetic/accuracy": metric(0.60, 0.02, True), "perplexity": metric(8.0, 0.1, False),
            "verbosity/words_mean": metric(40.0, 2.0, None)}
    same = dict(base, **{"arithmetic/accuracy": metric(0.61, 0.02, True)})  # within noise
    worse = dict(base, **{"arithmetic/accuracy": metric(0.45, 0.02, True)})  # injected regression
    return {"base": write_evaluation(tmp_path / "base.json", base),
            "same": write_evaluation(tmp_path / "same.json", same),
            "worse": write_evaluation(tmp_path / "worse.json", worse)}


def test_compare_detects_an_injected_regression_and_exits_non_zero(runs, capsys):
    assert main(["compare", runs["base"], runs["same"], "--fail-on-regression"]) == 0
    assert main(["compare", runs["base"], runs["worse"], "--fail-on-regression"]) == 1
    err = capsys.readouterr().err
    assert "regression:" in err and "arithmetic/accuracy 0.6 -> 0.45" in err
    assert main(["compare", runs["base"], runs["worse"]]) == 0  # reported, but only --fail-on-regression fails


def test_the_table_marks_changes_beyond_noise_and_knows_directions(runs, capsys):
    main(["compare", runs["base"], runs["same"], runs["worse"]])
    table = capsys.readouterr().out
    accuracy = next(line for line in table.splitlines() if line.startswith("arithmetic/accuracy ↑"))
    assert "(+0.01)" in accuracy and "(-0.15* !)" in accuracy  # 0.15 > 2 sqrt(0.02^2 + 0.02^2) = 0.057
    assert next(line for line in table.splitlines() if line.startswith("perplexity ↓"))
    assert "(baseline)" in table.splitlines()[0]


def test_lower_is_better_metrics_regress_upwards(tmp_path):
    base = read_evaluation(write_evaluation(tmp_path / "a.json", {"perplexity": metric(8.0, 0.1, False)}))
    up = read_evaluation(write_evaluation(tmp_path / "b.json", {"perplexity": metric(9.0, 0.1, False)}))
    down = read_evaluation(write_evaluation(tmp_path / "c.json", {"perplexity": metric(7.0, 0.1, False)}))
    assert compare([base, up, down]).rows[0].regression == [False, True, False]
    # 12.5% worse: not a regression with a 20% threshold for this metric
    assert compare([base, up], thresholds=["perplexity=0.2"]).rows[0].regression == [False, False]
    assert parse_thresholds(["0.1", "kl=0.3"]) == (0.1, {"kl": 0.3})


def test_markdown_and_csv_outputs(runs, tmp_path):
    md, table = tmp_path / "t.md", tmp_path / "t.csv"
    main(["compare", runs["base"], runs["worse"], "--markdown", str(md), "--csv", str(table)])
    assert "| arithmetic/accuracy ↑ |" in md.read_text() and "**0.45 ±0.02 (-0.15* !)**" in md.read_text()
    rows = list(csv.DictReader(table.open()))
    worse = next(r for r in rows if r["metric"] == "arithmetic/accuracy" and r["is_baseline"] == "False")
    assert (worse["value"], worse["regression"], worse["beyond_noise"]) == ("0.45", "True", "True")


def test_reads_the_evaluation_files_trainers_and_gym_runs_write(tmp_path):
    run = tmp_path / "grpo"
    run.mkdir()
    (run / "evaluation.json").write_text(json.dumps({
        "method": "grpo", "model": "tiny", "final_model": "runs/grpo/final", "steps": 10, "metrics": {
            "accuracy": {"value": 0.4, "n_prompts": 50}, "reward": {"value": 0.5, "n_prompts": 50},
            "completion_length": {"value": 12.0, "n_prompts": 50}},
        "baseline": {"accuracy": 0.2, "reward": 0.3, "completion_length": 30.0}}))
    trained = read_evaluation(str(run))
    assert trained.kind == "trainer (grpo)" and trained.metrics["accuracy"].n == 50
    assert trained.metrics["accuracy"].higher_is_better is True
    assert trained.metrics["completion_length"].higher_is_better is None
    before = read_evaluation(f"{run}@baseline")
    assert before.metrics["accuracy"].value == 0.2
    assert compare([before, trained]).rows[0].regression == [False, False]
    gym = tmp_path / "gym.json"
    gym.write_text(json.dumps({"algorithm": "ppo", "env_id": "CartPole-v1", "eval_mean_return": 200.0,
                               "eval_returns": [190.0, 210.0]}))
    assert read_evaluation(str(gym)).metrics["eval_mean_return"].stderr == pytest.approx(10.0)


@pytest.mark.parametrize("content, message", [
    ({"format": "posttrain.evaluation", "format_version": 99, "posttrain_version": "9.0"},
     "evaluation format version 99 \\(written by posttrain 9.0\\); this posttrain .* reads version 1"),
    ({"format": "lm-eval", "format_version": 1}, "format 'lm-eval' is not 'posttrain.evaluation'"),
    ({"results": {"acc": 0.5}}, "not an evaluation file posttrain knows"),
])
def test_unknown_formats_and_versions_are_refused(tmp_path, capsys, content, message):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(content))
    assert main(["compare", str(path)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_missing_files_and_folders_are_named(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope.json")]) == 2
    assert "no such evaluation file or run folder" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "evaluate it first: posttrain eval --model" in capsys.readouterr().err


def test_probe_answers_side_by_side(tmp_path):
    labels = []
    for name, reward in (("a", 1.0), ("b", 0.2)):
        (tmp_path / f"{name}_samples.jsonl").write_text("".join(json.dumps(
            {"metric": "probes", "group": "sky", "variant": variant, "prompt": "p", "output": f"{variant} | answer",
             "reward": reward, "words": 3}) + "\n" for variant in ("plain", "longer")))
        labels.append(write_evaluation(tmp_path / f"{name}.json", {}, samples=f"{name}_samples.jsonl",
                                       entries={"probes": {"metric": "probes", "status": "ok"}}))
    table = probe_table([read_evaluation(label) for label in labels])
    assert "## sky" in table and "| longer | reward 1, 3 words: longer \\| answer | reward 0.2," in table


def test_a_metric_computed_with_different_rewards_is_flagged(tmp_path, capsys):
    values = {"preference_accuracy": metric(0.7, 0.05, True)}
    files = [write_evaluation(tmp_path / f"{kind}.json", values, entries={"preference_accuracy": {
        "metric": "preference_accuracy", "status": "ok", "details": {"reward": kind}}}) for kind in ("simpo", "dpo")]
    assert main(["compare", *files]) == 0
    assert "note: preference_accuracy used different rewards" in capsys.readouterr().err


def test_fail_on_regression_also_fails_on_a_missing_metric_or_an_interrupted_evaluation(runs, tmp_path, capsys):
    base = json.loads(open(runs["base"]).read())["metrics"]
    lacking = write_evaluation(tmp_path / "lacking.json", {k: v for k, v in base.items() if k != "perplexity"})
    interrupted = write_evaluation(tmp_path / "interrupted.json", base, status="running")
    assert main(["compare", runs["base"], lacking]) == 0  # only reported without the flag
    assert main(["compare", runs["base"], lacking, "--fail-on-regression"]) == 1
    assert "not compared: " in capsys.readouterr().err
    assert main(["compare", runs["base"], interrupted, "--fail-on-regression"]) == 1
    assert "incomplete: " in capsys.readouterr().err
    assert main(["compare", runs["base"], runs["same"], "--fail-on-regression"]) == 0


def test_a_run_folder_reads_the_harness_file_and_at_trainer_the_trainers(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    write_evaluation(run / "final" / "evaluation.json", {"kl": metric(0.4, 0.03, None)})
    (run / "evaluation.json").write_text(json.dumps({"method": "sft", "model": "tiny", "metrics": {
        "perplexity": {"value": 2.0, "n_tokens": 90}}, "baseline": {"perplexity": 3.0}}))
    assert set(read_evaluation(str(run)).metrics) == {"kl"}
    assert read_evaluation(f"{run}@trainer").metrics["perplexity"].value == 2.0
    assert read_evaluation(f"{run}@baseline").metrics["perplexity"].value == 3.0
    assert main(["compare", f"{run}@trainer", str(run)]) == 0
    assert "harness evaluations" in capsys.readouterr().err  # mixing the two kinds is pointed out
    (run / "evaluation.json").unlink()
    assert main(["compare", f"{run}@baseline"]) == 2
    assert "no trainer's evaluation.json" in capsys.readouterr().err
