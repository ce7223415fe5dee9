"""``posttrain label``: sampled completions judged in pairs, written as preference rows that DPO loads unchanged;
best-vs-worst, the confidence filter and abstentions; a label -> DPO pipeline."""

import json

import pytest

from posttrain.cli import main
from posttrain.data import DataConfig, load_examples
from posttrain.errors import ConfigError
from posttrain.pipeline import run_pipeline
from posttrain.rollout.label import LabelConfig, label_preferences, pair_rows
from posttrain.rollout.judges import Verdict

SHORTER = "judge_rules:shorter"


@pytest.fixture
def rules(tmp_path, monkeypatch):
    (tmp_path / "judge_rules.py").write_text(
        "def shorter(prompts, completions, problems):\n    return [-float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def config(tmp_path, **overrides):
    values = dict(model="tiny", output_dir=str(tmp_path / "label"), num_prompts=4, samples=3, max_new_tokens=6,
                  judge={"rule": SHORTER}, pairs="all")
    values.update(overrides)
    return LabelConfig(**values)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_labelled_pairs_follow_the_judge_and_load_as_dpo_pairs(tmp_path, rules, tokenizer):
    evaluation = label_preferences(config(tmp_path))
    rows = read(tmp_path / "label" / "pairs.jsonl")
    assert rows and evaluation["n_pairs"] == len(rows)
    assert all(len(r["chosen"]) < len(r["rejected"]) and r["probability"] == 1.0 for r in rows)
    dropped = read(tmp_path / "label" / "dropped.jsonl")
    assert all(r["abstained"] and len(r["first"]) == len(r["second"]) for r in dropped)  # equal lengths: a tie
    assert evaluation["n_judged"] == len(rows) + len(dropped)
    train, _ = load_examples(DataConfig(path=evaluation["data"]), tokenizer, "pairs")
    assert len(train) == len(rows)
    assert not list((tmp_path / "label").glob(".tmp-*"))
    with pytest.raises(ConfigError, match="overwrite_output_dir"):
        label_preferences(config(tmp_path))


def test_best_worst_keeps_one_pair_per_prompt_and_the_confidence_filter_drops_unsure_pairs(tmp_path, rules):
    evaluation = label_preferences(config(tmp_path, pairs="best_worst", overwrite_output_dir=True))
    rows = read(tmp_path / "label" / "pairs.jsonl")
    assert len({r["prompt"] for r in rows}) == len(rows) <= 4
    for row in rows:  # best vs worst: no completion of that prompt is shorter than chosen or longer than rejected
        assert len(row["chosen"]) < len(row["rejected"])
    unsure = label_preferences(config(tmp_path, judge={"pairwise": "tiny"}, min_confidence=0.999,
                                      overwrite_output_dir=True))
    assert unsure["n_pairs"] == 0 and unsure["n_dropped"] == unsure["n_judged"] > 0  # a random judge is never sure
    assert evaluation["checker_decisive_pairs"] >= 0


def test_rejection_sampling_keeps_each_prompts_best_completion_that_reaches_the_reward(tmp_path, rules, tokenizer):
    everything = label_preferences(config(tmp_path, pairs="best"))
    bests = read(tmp_path / "label" / "best.jsonl")
    assert len(bests) == 4 and everything["data"].endswith("best.jsonl")
    threshold = -sorted(len(r["completion"]) for r in bests)[1]  # the second shortest best: some kept, some not
    evaluation = label_preferences(config(tmp_path, pairs="best", rewards=[{"function": SHORTER}], min_reward=threshold,
                                          overwrite_output_dir=True))
    kept, dropped = read(tmp_path / "label" / "best.jsonl"), read(tmp_path / "label" / "dropped.jsonl")
    assert len(kept) >= 2 and len(kept) + len(dropped) == 4
    assert all(-len(r["completion"]) == r["reward"] >= threshold for r in kept)
    assert all(r["reward"] < threshold for r in dropped)
    assert {"checker_accuracy_sampled", "checker_accuracy_kept"} <= set(evaluation)
    train, _ = load_examples(DataConfig(path=evaluation["data"]), tokenizer, "sft")
    assert len(train) == len(kept)
    with pytest.raises(ConfigError, match="pairs: best"):
        config(tmp_path, min_reward=1.0)


def test_best_is_the_judges_top_completion(tmp_path, rules):
    from posttrain.rollout.label import best_rows

    verdicts = {(0, 1): Verdict(0.1), (0, 2): Verdict(0.5, True), (1, 2): Verdict(0.9)}  # 1 beats both
    from posttrain.tasks import Problem

    kept, dropped = best_rows(config(tmp_path, pairs="best"), [Problem("p", "")], [["a", "bb", "c"]], {0: verdicts})
    assert kept == [{"prompt": "p", "completion": "bb", "score": pytest.approx(0.9)}] and dropped == []


def test_pair_rows_rank_by_mean_win_probability():
    verdicts = {(0, 1): Verdict(0.9), (0, 2): Verdict(0.6), (1, 2): Verdict(0.2)}  # 0 best, 1 worst
    kept, dropped = pair_rows("p", ["a", "b", "c"], verdicts, "best_worst", 0.5)
    assert kept == [{"prompt": "p", "chosen": "a", "rejected": "b", "probability": 0.9, "consistent": None}]
    kept, dropped = pair_rows("p", ["a", "b", "c"], verdicts, "all", 0.7)
    assert [(r["chosen"], r["rejected"]) for r in kept] == [("a", "b"), ("c", "b")] and len(dropped) == 1


def test_label_then_dpo_pipeline_and_the_cli(tmp_path, rules):
    label_file = tmp_path / "label.json"
    label_file.write_text(json.dumps({"model": "tiny", "num_prompts": 6, "samples": 3, "max_new_tokens": 6,
                                      "judge": {"rule": SHORTER}}))
    dpo_file = tmp_path / "dpo.json"
    dpo_file.write_text(json.dumps({"method": "dpo", "model": "tiny", "max_steps": 2, "batch_size": 2,
                                    "progress_bar": False, "eval_on_start": False, "data": {"path": "x"}}))
    pipeline = tmp_path / "rlaif.json"
    pipeline.write_text(json.dumps({"output_dir": str(tmp_path / "rlaif"), "stages": [
        {"name": "label", "label": str(label_file)},
        {"name": "dpo", "config": str(dpo_file), "overrides": {"data.path": "{label}"}}]}))
    results = run_pipeline(pipeline)
    assert results["dpo"]["steps"] == 2
    assert json.loads((tmp_path / "rlaif" / "dpo" / "config.json").read_text())["data"]["path"] == \
        str(tmp_path / "rlaif" / "label" / "pairs.jsonl")
    assert main(["label", str(label_file), f"output_dir={tmp_path / 'cli'}"]) == 0
    assert (tmp_path / "cli" / "evaluation.json").is_file()
