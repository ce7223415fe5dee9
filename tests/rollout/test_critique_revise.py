"""SL-CAI on the tiny model: the chain keeps every step in order (each step's prompt is built from the one before),
the SFT file loads as SFT examples, selection keeps a revision that passes the checker, bad constitutions name the
file and key, and a constitution -> SFT pipeline runs."""

import json

import pytest

from posttrain.cli import main
from posttrain.data.examples import load_examples
from posttrain.data.formats import DataConfig
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model
from posttrain.pipeline import run_pipeline
from posttrain.rollout import critique_revise as cr
from posttrain.rollout.constitution import parse_constitution
from posttrain.rollout.critique_revise import ConstitutionConfig, critique_revise, draw_principle, select_revision
from posttrain.tasks import get_task

CONSTITUTION = {"name": "t", "principles": [
    {"name": "short", "critique": "CRITIQUE-SHORT", "revision": "REVISE-SHORT", "checker": {"word_limit": 3}},
    {"name": "free", "critique": "CRITIQUE-FREE", "revision": "REVISE-FREE"}]}


@pytest.fixture
def files(tmp_path):
    constitution = tmp_path / "c.json"
    constitution.write_text(json.dumps(CONSTITUTION))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    return constitution, prompts


def config(tmp_path, files, **overrides):
    values = dict(constitution=str(files[0]), prompts=str(files[1]), model="tiny", output_dir=str(tmp_path / "out"),
                  max_new_tokens=5, rounds=2, revisions=2, num_prompts=3)
    return ConstitutionConfig(**{**values, **overrides})


def test_the_chain_keeps_every_step_in_order(tmp_path, files, tokenizer, monkeypatch):
    seen = []  # every prompt the model was asked, decoded, in call order
    real_sample = cr.sample

    def recording_sample(model, tok, ids, params, **kw):
        seen.append([tok.decode(i) for i in ids])
        return real_sample(model, tok, ids, params, **kw)

    monkeypatch.setattr(cr, "sample", recording_sample)
    evaluation = critique_revise(config(tmp_path, files), build_tiny_model(seed=0), tokenizer)
    chains = [json.loads(line) for line in (tmp_path / "out/chains.jsonl").read_text().splitlines()]
    assert len(seen) == 1 + 2 * 2  # the answer, then per round one critique and one revision call
    constitution = parse_constitution(CONSTITUTION)
    for i, chain in enumerate(chains):
        assert chain["prompt"] == f"question {i}"
        assert [s["round"] for s in chain["steps"]] == [0, 1]
        previous = chain["response"]
        for r, step in enumerate(chain["steps"]):
            principle = draw_principle(constitution, 0, r, i)
            assert step["principle"] == principle.name and len(step["revisions"]) == 2
            critique_prompt, revision_prompt = seen[1 + 2 * r][i], seen[2 + 2 * r][i]
            # the critique is asked of the previous step's kept text, the revision after that critique
            assert previous in critique_prompt and principle.critique in critique_prompt
            assert revision_prompt.startswith(critique_prompt) and step["critique"] in revision_prompt
            assert principle.revision in revision_prompt
            assert step["selected"] == select_revision([principle], chain["prompt"], step["revisions"])
            assert step["complies"] == principle.complies(chain["prompt"], step["revisions"][step["selected"]])
            previous = step["revisions"][step["selected"]]
        assert chain["final"] == previous
    assert evaluation["data"] == str(tmp_path / "out/sft.jsonl")
    short = constitution.principles[0]  # the one principle with a checker; "free" has none, so no figure
    answers = {"response": [c["response"] for c in chains], "final": [c["final"] for c in chains],
               "first_revision": [c["steps"][-1]["revisions"][0] for c in chains]}  # before selection
    for key, texts in answers.items():
        expected = sum(short.complies(c["prompt"], t) for c, t in zip(chains, texts)) / len(chains)
        assert evaluation[f"compliance/short/{key}"] == expected
    assert not any(key.startswith("compliance/free") for key in evaluation)
    train, _ = load_examples(DataConfig(path=evaluation["data"]), tokenizer, "sft")
    assert len(train) == 3
    rows = [json.loads(line) for line in (tmp_path / "out/sft.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": c["prompt"], "completion": c["final"]} for c in chains]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chains.jsonl", "config.json",
                                                                    "evaluation.json", "sft.jsonl"]
    with pytest.raises(ConfigError, match="overwrite_output_dir"):
        critique_revise(config(tmp_path, files), build_tiny_model(seed=0), tokenizer)


def test_helpfulness_samples_follow_the_revisions_unrevised(tmp_path, files, tokenizer):
    evaluation = critique_revise(config(tmp_path, files, rounds=1, helpfulness_task="arithmetic",
                                        num_helpfulness_prompts=2), build_tiny_model(seed=0), tokenizer)
    chains = [json.loads(line) for line in (tmp_path / "out/chains.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "out/sft.jsonl").read_text().splitlines()]
    problems = get_task("arithmetic").problems("train", 2, 0)
    assert rows[:3] == [{"prompt": c["prompt"], "completion": c["final"]} for c in chains]
    assert [r["prompt"] for r in rows[3:]] == [p.prompt for p in problems]
    assert evaluation["n_helpfulness_rows"] == 2
    unmixed = critique_revise(config(tmp_path, files, rounds=1, output_dir=str(tmp_path / "plain")),
                              build_tiny_model(seed=0), tokenizer)
    assert (tmp_path / "plain/chains.jsonl").read_text() == (tmp_path / "out/chains.jsonl").read_text()
    assert unmixed["n_helpfulness_rows"] == 0
    with pytest.raises(ConfigError, match="num_helpfulness_prompts needs helpfulness_task"):
        critique_revise(config(tmp_path, files, num_helpfulness_prompts=2, overwrite_output_dir=True),
                        build_tiny_model(seed=0), tokenizer)


def test_selection_keeps_the_revision_that_passes_the_most_checkers_first_among_ties():
    short, free = parse_constitution(CONSTITUTION).principles
    assert select_revision([short], "p", ["one two three four", "one two", "a"]) == 1
    assert select_revision([short], "p", ["one two three four", "five six seven eight"]) == 0
    assert select_revision([free], "p", ["x y z w", "a"]) == 0
    answer = parse_constitution({"name": "a", "principles": [
        {"name": "answer", "critique": "c", "revision": "r", "checker": {"required_pattern": "answer is"}}]})
    both = [short, free, *answer.principles]
    texts = ["one two", "the answer is seven", "answer is 7", "answer is 8"]
    assert select_revision([short], "p", texts) == 0  # the drawn principle alone: the first short one
    assert select_revision(both, "p", texts) == 2     # every checker: short and in the answer's form


def test_direct_revisions_skip_the_critique(tmp_path, files, tokenizer, monkeypatch):
    seen = []
    real_sample = cr.sample

    def recording_sample(model, tok, ids, params, **kw):
        seen.append([tok.decode(i) for i in ids])
        return real_sample(model, tok, ids, params, **kw)

    monkeypatch.setattr(cr, "sample", recording_sample)
    critique_revise(config(tmp_path, files, critique=False, rounds=1, selection="constitution"),
                    build_tiny_model(seed=0), tokenizer)
    chains = [json.loads(line) for line in (tmp_path / "out/chains.jsonl").read_text().splitlines()]
    assert len(seen) == 2  # the answers, then the revisions: no critique call
    for i, chain in enumerate(chains):
        principle = draw_principle(parse_constitution(CONSTITUTION), 0, 0, i)
        assert chain["steps"][0]["critique"] is None
        assert principle.revision in seen[1][i] and principle.critique not in seen[1][i]
        assert chain["response"] in seen[1][i]


def test_a_bad_constitution_names_the_file_and_the_key(tmp_path, files, tokenizer):
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - {name: a, critique: c, revision: r, checker: {word_limit: 0}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: principles\[0\].checker.word_limit"):
        critique_revise(config(tmp_path, files, constitution=str(bad)), build_tiny_model(seed=0), tokenizer)


def test_constitution_then_sft_pipeline_and_the_cli(tmp_path, files):
    stage = tmp_path / "sl.json"
    stage.write_text(json.dumps({"method": "constitution", "constitution": str(files[0]), "prompts": str(files[1]),
                                 "model": "tiny", "max_new_tokens": 4, "revisions": 2}))
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps({"method": "sft", "model": "tiny", "max_steps": 2, "batch_size": 2,
                               "progress_bar": False, "eval_on_start": False, "data": {"path": "x"}}))
    pipeline = tmp_path / "cai.json"
    pipeline.write_text(json.dumps({"output_dir": str(tmp_path / "cai"), "stages": [
        {"name": "revisions", "constitution": str(stage)},
        {"name": "sft", "config": str(sft), "overrides": {"data.path": "{revisions}"}}]}))
    results = run_pipeline(pipeline)
    assert results["sft"]["steps"] == 2
    assert json.loads((tmp_path / "cai/sft/config.json").read_text())["data"]["path"] == \
        str(tmp_path / "cai/revisions/sft.jsonl")
    assert main(["constitution", str(stage), f"output_dir={tmp_path / 'cli'}"]) == 0
    assert (tmp_path / "cli/evaluation.json").is_file()


def test_the_shipped_safety_constitution_and_configs_load(monkeypatch):
    from pathlib import Path

    from posttrain.config import build_config, read_config_file
    from posttrain.pipeline import check_stages
    from posttrain.rollout.constitution import load_constitution

    root = Path(__file__).resolve().parents[2]
    constitution = load_constitution(root / "configs/constitutions/safety.yaml")
    harmless, not_evasive = constitution.principles[:2]
    harmful = "How do I cut the brake lines on my ex's car?"
    assert harmless.complies(harmful, "I can't help with that.") and not harmless.complies(harmful, "Use pliers.")
    assert not_evasive.complies(harmful, "I can't help with that.")
    sl = build_config(ConstitutionConfig, read_config_file(root / "configs/constitution_sl.yaml"))
    assert sl.revisions == 4 and Path(root / sl.prompts).is_file()
    stages = read_config_file(root / "configs/constitutional.yaml")["stages"]
    monkeypatch.chdir(root)  # the pipeline's stage files are relative to the repository
    assert [s["name"] for s in check_stages(stages, "constitutional.yaml")][:2] == ["revisions", "sft"]  # then RL-CAI
