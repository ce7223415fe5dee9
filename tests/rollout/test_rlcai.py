"""The RL stage of Constitutional AI on the tiny model: the judge built from a constitution asks each pair the drawn
principle's question; the draw is seeded and independent of batching; the label stage writes pairs (with their
principle) that DPO trains on, after SL-CAI and SFT, in a pipeline that resumes; the shipped configs load."""

import json
from pathlib import Path

import pytest

from posttrain import api
from posttrain.errors import ConfigError
from posttrain.pipeline import run_pipeline
from posttrain.rollout import judges
from posttrain.rollout.constitution import ConstitutionalJudge, load_constitution, principle_agreement
from posttrain.rollout.judge_specs import build_judge
from posttrain.rollout.judges import PairwiseJudge

CONSTITUTION = {"name": "t", "principles": [
    {"name": "short", "critique": "CRITIQUE-SHORT", "revision": "REVISE-SHORT", "judge": "QUESTION-SHORT?",
     "checker": {"word_limit": 2}},
    {"name": "polite", "critique": "CRITIQUE-POLITE", "revision": "REVISE-POLITE", "judge": "QUESTION-POLITE?"},
    {"name": "unasked", "critique": "CRITIQUE-UNASKED", "revision": "REVISE-UNASKED"}]}
PAIRS = [(f"request {i}", f"first answer {i}", f"second answer {i}") for i in range(8)]


@pytest.fixture
def model(sharp_model):
    return sharp_model  # tests/rollout/conftest.py


@pytest.fixture
def constitution_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(CONSTITUTION))
    return path


def test_the_judge_asks_each_pair_the_drawn_principles_question(constitution_file, model, tokenizer, monkeypatch):
    judge = build_judge({"constitution": str(constitution_file), "model": "tiny", "seed": 0},
                        lambda spec: (model, tokenizer))
    constitution = load_constitution(constitution_file)
    short, polite = constitution.principles[:2]
    assert list(judge.judges) == ["short", "polite"]  # a principle without a judge question is never asked
    assert judge.judges["short"].template == short.judge_template() and "QUESTION-SHORT?" in short.judge_template()
    asked = []
    real = judges.chat_prompts
    monkeypatch.setattr(judges, "chat_prompts", lambda tok, questions: asked.extend(questions) or real(tok, questions))
    prompts, firsts, seconds = map(list, zip(*PAIRS))
    verdicts = judge(prompts, firsts, seconds)
    drawn = [judge.principle(*pair) for pair in PAIRS]
    assert {p.name for p in drawn} == {"short", "polite"}
    for (prompt, first, second), principle, verdict in zip(PAIRS, drawn, verdicts):
        other = polite if principle.name == "short" else short
        mine = [q for q in asked if f"\n{prompt}\n" in q]
        assert len(mine) == 2 and all(principle.judge in q and other.judge not in q for q in mine)  # both orders
        assert verdict.principle == principle.name
        alone = PairwiseJudge(model, tokenizer, principle.judge_template())([prompt], [first], [second])[0]
        wrong = PairwiseJudge(model, tokenizer, other.judge_template())([prompt], [first], [second])[0]
        assert verdict.orders == pytest.approx(alone.orders, abs=1e-6)
        assert verdict.probability == pytest.approx(alone.probability, abs=1e-6)
        assert verdict.orders != pytest.approx(wrong.orders, abs=1e-3)  # the other question reads differently
    cot = build_judge({"constitution": str(constitution_file), "model": "tiny", "cot": True},
                      lambda spec: (model, tokenizer))
    assert cot.judges["short"].cot and cot.judges["short"].template == short.judge_template(cot=True) != \
        short.judge_template()


def test_the_principle_drawn_for_a_pair_is_seeded_and_independent_of_batching(constitution_file, model, tokenizer):
    constitution = load_constitution(constitution_file)
    pairs = [(f"q{i}", f"a{i}", f"b{i}") for i in range(40)]

    def draws(seed, rows):
        judge = ConstitutionalJudge(constitution, model, tokenizer, seed=seed)
        return [judge.principle(*pair).name for pair in rows]

    seed0 = draws(0, pairs)
    assert seed0 == draws(0, pairs[::-1])[::-1] and seed0 != draws(1, pairs)
    assert {"short", "polite"} == set(seed0)
    judge = ConstitutionalJudge(constitution, model, tokenizer, seed=0)
    whole = judge(*map(list, zip(*PAIRS)))
    backwards = judge(*map(list, zip(*PAIRS[::-1])))[::-1]
    assert [v.principle for v in whole] == [v.principle for v in backwards]
    assert [v.probability for v in whole] == pytest.approx([v.probability for v in backwards], abs=1e-6)
    bare = dict(CONSTITUTION, principles=[CONSTITUTION["principles"][2]])
    (constitution_file.parent / "bare.json").write_text(json.dumps(bare))
    with pytest.raises(ConfigError, match="no principle has a `judge` question"):
        build_judge({"constitution": str(constitution_file.parent / "bare.json")}, lambda spec: (model, tokenizer))
    with pytest.raises(ConfigError, match="unknown key 'criterion'"):
        build_judge({"constitution": str(constitution_file), "criterion": "x"})


def test_principle_agreement_counts_only_pairs_the_checker_separates(constitution_file):
    constitution = load_constitution(constitution_file)
    rows = [{"prompt": "p", "chosen": "two words", "rejected": "three words here", "principle": "short"},  # agrees
            {"prompt": "p", "chosen": "three words here", "rejected": "two words", "principle": "short"},  # disagrees
            {"prompt": "p", "chosen": "a", "rejected": "b", "principle": "short"},  # both comply: not decisive
            {"prompt": "p", "chosen": "one", "rejected": "a b c d", "principle": "polite"}]  # no checker
    assert principle_agreement(constitution, rows) == {"principle_decisive_pairs": 2, "principle_agreement": 0.5}
    assert principle_agreement(constitution, rows[2:]) == {"principle_decisive_pairs": 0, "principle_agreement": None}


def test_the_checkers_judge_prefers_the_response_more_checkers_accept(tmp_path):
    spec = {"name": "c", "principles": [
        {"name": "short", "critique": "c", "revision": "r", "checker": {"word_limit": 3}},
        {"name": "answer", "critique": "c", "revision": "r", "checker": {"required_pattern": "answer is"}},
        {"name": "free", "critique": "c", "revision": "r"}]}
    judge = build_judge({"constitution": write(tmp_path / "c.json", spec), "checkers": True})
    firsts = ["answer is 4", "one two three four five", "x", "answer is seven, surely"]
    seconds = ["answer is 4 or so, maybe", "the answer is five", "y", "four"]
    # counts 2 vs 1, 0 vs 1, 1 vs 1 (tie), 1 vs 1 (tie)
    verdicts = judge(["p"] * 4, firsts, seconds)
    assert [(v.probability, v.abstained) for v in verdicts] == [(1.0, False), (0.0, False), (0.5, True), (0.5, True)]
    with pytest.raises(ConfigError, match="checkers must be true or false"):
        build_judge({"constitution": write(tmp_path / "c.json", spec), "checkers": "yes"})
    unchecked = {"name": "u", "principles": [{"name": "free", "critique": "c", "revision": "r"}]}
    with pytest.raises(ConfigError, match="no principle has a checker"):
        build_judge({"constitution": write(tmp_path / "u.json", unchecked), "checkers": True})


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_sl_then_rl_cai_pipeline_trains_dpo_on_the_judged_pairs_and_resumes(tmp_path, constitution_file, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"request {i}"}) + "\n" for i in range(4)))
    trainer = {"model": "tiny", "max_steps": 2, "batch_size": 2, "progress_bar": False, "eval_on_start": False,
               "data": {"path": "x"}}
    stages = [
        {"name": "revisions", "constitution": write(tmp_path / "sl.json", {
            "constitution": str(constitution_file), "prompts": str(prompts), "model": "tiny", "max_new_tokens": 4})},
        {"name": "sft", "config": write(tmp_path / "sft.json", {"method": "sft", **trainer}),
         "overrides": {"data.path": "{revisions}"}},
        {"name": "rl_pairs", "label": write(tmp_path / "rl.json", {
            "prompts": str(prompts), "task": None, "samples": 3, "max_new_tokens": 6, "pairs": "all",
            "judge": {"constitution": str(constitution_file), "model": "tiny", "seed": 0}}),
         "overrides": {"model": "{sft}"}},
        {"name": "dpo", "config": write(tmp_path / "dpo.json", {"method": "dpo", **trainer}),
         "overrides": {"model": "{sft}", "data.path": "{rl_pairs}"}}]
    pipeline = write(tmp_path / "cai.json", {"output_dir": str(tmp_path / "cai"), "stages": stages})
    results = run_pipeline(pipeline)
    out = tmp_path / "cai"
    rows = [json.loads(line) for line in (out / "rl_pairs/pairs.jsonl").read_text().splitlines()]
    assert rows and {r["principle"] for r in rows} <= {"short", "polite"}
    assert results["rl_pairs"]["final_model"] == str(out / "sft/final")  # the SL model samples
    assert "principle_agreement" in results["rl_pairs"]
    dpo_config = json.loads((out / "dpo/config.json").read_text())
    assert dpo_config["data"]["path"] == str(out / "rl_pairs/pairs.jsonl")
    assert dpo_config["model"] == str(out / "sft/final") and results["dpo"]["steps"] == 2

    def never(*args, **kwargs):
        raise AssertionError("a complete stage ran again")

    for name in ("constitution", "label", "train"):
        monkeypatch.setattr(api, name, never)
    assert run_pipeline(pipeline) == results  # every stage complete: all skipped
    (out / "dpo/evaluation.json").unlink()  # interrupted after labelling: only DPO runs again
    monkeypatch.undo()
    monkeypatch.setattr(api, "label", never)
    monkeypatch.setattr(api, "constitution", never)
    again = run_pipeline(pipeline)
    assert again["dpo"]["steps"] == 2 and again["rl_pairs"] == results["rl_pairs"]


def test_the_shipped_rl_cai_configs_load(monkeypatch):
    from posttrain.config import build_config, read_config_file
    from posttrain.pipeline import check_stages
    from posttrain.rollout.label import LabelConfig

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    config = build_config(LabelConfig, read_config_file("configs/rlcai_label.yaml"))
    constitution = load_constitution(config.judge["constitution"])
    assert sum(p.judge is not None for p in constitution.principles) == 3 and Path(config.prompts).is_file()
    stages = check_stages(read_config_file("configs/constitutional.yaml")["stages"], "constitutional.yaml")
    assert [s["name"] for s in stages] == ["revisions", "sft", "sl_evaluation", "rl_pairs", "dpo", "rl_evaluation"]
