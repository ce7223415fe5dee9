"""The harness: suites checked up front, evaluation.json written after every metric, failures recorded, bad models
named plainly."""

import json
from pathlib import Path

import pytest

from posttrain.errors import ConfigError, ModelLoadError
from posttrain.eval import METRICS, evaluate, load_suite
from posttrain.eval.harness import load_evaluated_model
from posttrain.models import build_tiny_model

VERBOSITY = {"metric": "verbosity", "limit": 3, "max_new_tokens": 4}


@pytest.fixture
def tiny_pair(tokenizer):
    return build_tiny_model(), tokenizer


def test_a_failing_metric_is_recorded_and_the_next_one_runs(tiny_pair, tmp_path):
    out = tmp_path / "evaluation.json"
    suite = [{"metric": "preference_accuracy", "data": str(tmp_path / "missing.jsonl")}, VERBOSITY]
    result = evaluate(tiny_pair, suite, out=out, progress=False)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    failed = saved["entries"]["preference_accuracy"]
    assert failed["status"] == "failed" and "DataError" in failed["error"] and "missing.jsonl" in failed["error"]
    assert saved["entries"]["verbosity"]["status"] == "ok" and "verbosity/words_mean" in saved["metrics"]
    assert saved["status"] == "complete" and saved["failed_metrics"] == ["preference_accuracy"]
    samples = [json.loads(line) for line in (tmp_path / "evaluation_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and {"metric", "prompt", "output", "words", "tokens"} <= set(samples[0])


def test_results_already_computed_survive_an_interruption(tiny_pair, tmp_path, monkeypatch):
    def interrupted(context, options):
        raise KeyboardInterrupt

    monkeypatch.setitem(METRICS, "perplexity", (METRICS["perplexity"][0], interrupted))
    out = tmp_path / "evaluation.json"
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_pair, [VERBOSITY, "perplexity"], out=out, progress=False)
    saved = json.loads(out.read_text())
    assert saved["status"] == "running" and saved["metrics"]["verbosity/words_mean"]["n"] == 3


def test_evaluation_json_describes_the_run(tiny_pair, tmp_path):
    result = evaluate(tiny_pair, [VERBOSITY], seed=3, progress=False)
    assert result["format"] == "posttrain.evaluation" and result["format_version"] == 1
    assert result["seed"] == 3 and result["model"] == "tiny" and result["samples"] is None  # no out: no files
    assert result["suite"]["entries"][0] == {"name": "verbosity", "metric": "verbosity", "prompts":
                                            "data/eval/prompts.jsonl", "limit": 3, "max_new_tokens": 4}
    value = result["metrics"]["verbosity/word_limit_compliance"]
    assert set(value) == {"value", "n", "stderr", "higher_is_better"} and value["higher_is_better"] is True


def test_same_seed_same_evaluation(tiny_pair):
    suite = [{"metric": "task_accuracy", "n": 3, "samples": 2, "pass_at": [2], "max_new_tokens": 6}]
    first = evaluate(tiny_pair, suite, seed=1, progress=False)
    second = evaluate(tiny_pair, suite, seed=1, progress=False)
    assert first["metrics"] == second["metrics"]


@pytest.mark.parametrize("suite, message", [
    (["bleu"], "unknown metric 'bleu'; available metrics: perplexity, verbosity, task_accuracy"),
    ([{"metric": "verbosity", "limt": 3}], "unknown key 'limt'; did you mean 'limit'"),
    ([{"metric": "verbosity", "limit": "three"}], "expected an integer"),
    ([{"metric": "reward"}], "needs the option 'rewards'"),
    ([{"metric": "reward", "rewards": [{"nme": "verbosity"}]}], "unknown key 'nme'"),
    ([{"metric": "task_accuracy", "samples": 2, "pass_at": [4]}], "pass_at=[4]"),
    ([{"metric": "task_accuracy", "task": "chess"}], "unknown task 'chess'"),
    ([{"metric": "reward", "rewards": [{"model": "/nonexistent/rm"}]}], "no reward model folder"),
    (["verbosity", "verbosity"], "two entries are named 'verbosity'"),
    ("nightly", "unknown suite 'nightly': built-in suites are default, quick"),
])
def test_bad_suites_are_refused_with_what_is_allowed(suite, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_suite(suite)


def test_a_suite_file_and_the_shipped_presets_load(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("metrics:\n  - perplexity\n  - {metric: task_accuracy, name: words, task: word_problems}\n")
    suite = load_suite(str(path))
    assert suite.name == "mine" and [e.name for e in suite.entries] == ["perplexity", "words"]
    assert suite.entries[1].options.task == "word_problems"
    (tmp_path / "bad.yaml").write_text("metric: [perplexity]\n")
    with pytest.raises(ConfigError, match="expected the keys 'metrics'"):
        load_suite(str(tmp_path / "bad.yaml"))
    # every metric but lm_eval, which runs only when asked (--lm-eval TASKS), and judge_agreement, which measures a
    # judge rather than the evaluated model (configs/eval_judges.yaml)
    for name in ("default", "quick"):
        assert {e.metric for e in load_suite(name).entries} == set(METRICS) - {"lm_eval", "judge_agreement"}
    preset = load_suite(str(Path(__file__).parents[2] / "configs" / "eval_tasks.yaml"))
    assert [e.options.task for e in preset.entries] == ["arithmetic", "word_problems", "constraints", "verbosity"]


def test_model_paths_that_are_not_models(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="is a file, not a model"):
        load_evaluated_model(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="is a folder but not a model"):
        load_evaluated_model(str(tmp_path / "empty"))
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": "sft", "model": "tiny"}))
    with pytest.raises(ModelLoadError, match="training run's folder.*--model .*final"):
        load_evaluated_model(str(run))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(ModelLoadError, match="could not load a model"):
        load_evaluated_model(str(tmp_path / "broken"))
