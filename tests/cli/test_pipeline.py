"""``posttrain pipeline``: SFT -> reward model -> PPO on the tiny model, each stage reading the previous stage's
folder; a second run skips complete stages and redoes only what is missing; bad pipeline files fail clearly."""

import json

import pytest

from posttrain.cli import main
from posttrain.errors import ConfigError
from posttrain.pipeline import run_pipeline

COMMON = {"model": "tiny", "max_steps": 2, "batch_size": 2, "progress_bar": False, "eval_on_start": False,
          "logging_steps": 1}


@pytest.fixture
def pipeline_file(tmp_path, write_jsonl):
    sft_rows = write_jsonl("sft.jsonl", [{"prompt": f"What is {i} + 1?", "completion": f"{i + 1}"} for i in range(8)])
    pairs = write_jsonl("pairs.jsonl", [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}", "rejected": "no idea"}
                                        for i in range(8)])
    configs = {
        "sft": dict(COMMON, method="sft", data={"path": str(sft_rows)}),
        "reward": dict(COMMON, method="reward", data={"path": str(pairs), "eval_path": str(pairs)}),
        "ppo": dict(COMMON, method="ppo", task="", data={"path": str(pairs), "eval_path": str(pairs),
                                                         "eval_split": "[:2]"},
                    max_new_tokens=3, ppo_epochs=1, num_minibatches=1),
    }
    for name, config in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
    pipeline = {"output_dir": str(tmp_path / "rlhf"), "stages": [
        {"name": "sft", "config": str(tmp_path / "sft.json")},
        {"name": "reward", "config": str(tmp_path / "reward.json"), "overrides": {"model": "{sft}"}},
        {"name": "ppo", "config": str(tmp_path / "ppo.json"),
         "overrides": {"model": "{sft}", "reward_model": "{reward}", "lora.enabled": False}},
    ]}
    path = tmp_path / "rlhf.json"
    path.write_text(json.dumps(pipeline))
    return path


def test_stages_chain_and_a_second_run_redoes_only_what_is_missing(pipeline_file, tmp_path, capsys):
    assert main(["pipeline", str(pipeline_file)]) == 0
    out = tmp_path / "rlhf"
    for stage in ("sft", "reward", "ppo"):
        assert (out / stage / "evaluation.json").is_file() and (out / stage / "final").is_dir()
    ppo_config = json.loads((out / "ppo" / "config.json").read_text())
    assert ppo_config["model"] == str(out / "sft" / "final")
    assert ppo_config["reward_model"] == str(out / "reward" / "final")
    assert json.loads(capsys.readouterr().out).keys() == {"sft", "reward", "ppo"}

    done = {stage: (out / stage / "evaluation.json").stat().st_mtime_ns for stage in ("sft", "reward")}
    (out / "ppo" / "evaluation.json").unlink()  # as if PPO had been interrupted after its last checkpoint
    results = run_pipeline(pipeline_file)
    assert {stage: (out / stage / "evaluation.json").stat().st_mtime_ns for stage in ("sft", "reward")} == done
    assert results["ppo"]["steps"] == 2 and (out / "ppo" / "evaluation.json").is_file()


@pytest.mark.parametrize("stages, message", [
    ([], "non-empty list"),
    ([{"config": "x.json"}], "needs a `name`"),
    ([{"name": "a", "config": "missing.yaml"}], "not found"),
    ([{"name": "a", "evaluate": {"model": "{b}"}}], "names no earlier stage"),
    ([{"name": "a", "evaluate": {}, "trainer": "x"}], "unknown key"),
])
def test_bad_pipeline_files_name_the_stage_and_key(tmp_path, stages, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path / "out"), "stages": stages}))
    with pytest.raises(ConfigError, match=message):
        run_pipeline(path)


def test_an_interrupted_evaluation_stage_runs_again(tmp_path):
    from posttrain.pipeline import complete_evaluation

    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({"format": "posttrain.evaluation", "status": "running", "metrics": {}}))
    assert complete_evaluation(path) is None
    path.write_text(json.dumps({"format": "posttrain.evaluation", "status": "complete", "metrics": {}}))
    assert complete_evaluation(path)["status"] == "complete"
    path.write_text(json.dumps({"method": "sft", "metrics": {}}))  # a trainer's: written last, so complete
    assert complete_evaluation(path) is not None
    assert complete_evaluation(tmp_path / "missing.json") is None
