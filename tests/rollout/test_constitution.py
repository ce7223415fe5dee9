"""Constitution files: principles with critique/revision requests, judge questions and checkers; every error names
the file and the key."""

import json

import pytest

from posttrain.errors import ConfigError
from posttrain.rollout.constitution import is_refusal, load_constitution, parse_constitution
from posttrain.rollout.judges import PairwiseJudge

PRINCIPLE = {"name": "brevity", "critique": "Too long?", "revision": "Shorten it."}


def test_the_shipped_constitution_parses_and_its_checkers_measure_compliance(tokenizer):
    constitution = load_constitution("configs/constitutions/concise.yaml")
    assert constitution.name == "concise" and [p.name for p in constitution.principles] == [
        "brevity", "answer_format", "helpful"]
    brevity, answer_format, helpful = constitution.principles
    assert brevity.complies("q", "The answer is 4.") and not brevity.complies("q", "word " * 31)
    assert answer_format.complies("q", "So: the answer is -1,200.") and not answer_format.complies("q", "It is 4")
    assert helpful.complies("q", "Sure, here it is.") and not helpful.complies("q", "I'm sorry, but I can't help.")
    template = brevity.judge_template()
    assert "{prompt}" in template and "{first}" in template and brevity.judge in template
    PairwiseJudge(None, tokenizer, template)  # a valid pairwise template


def test_refusal_detector():
    for text in ("I can't help with that.", "I cannot do this", "I'm sorry, but no.", "As an AI, I won't",
                 "I am unable to assist."):
        assert is_refusal(text), text
    for text in ("The answer is 4.", "You can't go wrong with blue.", "Sorry for the wait: here it is."):
        assert not is_refusal(text), text


@pytest.mark.parametrize("data, message", [
    ({"principles": []}, r"c\.yaml: principles: expected a non-empty list"),
    ({"principles": [PRINCIPLE], "rules": 1}, r"c\.yaml: unknown key 'rules'"),
    ({"principles": [{"name": "x", "critique": "c"}]}, r"c\.yaml: principles\[0\]\.revision: missing"),
    ({"principles": [dict(PRINCIPLE, checker={"word_limit": 0})]},
     r"c\.yaml: principles\[0\]\.checker\.word_limit: expected a whole number"),
    ({"principles": [dict(PRINCIPLE, checker={"length": 3})]}, r"principles\[0\]\.checker: unknown checker 'length'"),
    ({"principles": [dict(PRINCIPLE, checker={"forbidden_pattern": "("})]},
     r"principles\[0\]\.checker\.forbidden_pattern: not a valid regular expression"),
    ({"principles": [PRINCIPLE, dict(PRINCIPLE, extra=1)]}, r"principles\[1\]: unknown key 'extra'"),
    ({"principles": [PRINCIPLE, PRINCIPLE]}, r"the name 'brevity' is used twice"),
    ({"principles": [dict(PRINCIPLE, judge="")]}, r"principles\[0\]\.judge: expected a question"),
])
def test_parsing_errors_name_the_file_and_key(tmp_path, data, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    with pytest.raises(ConfigError, match=message):
        load_constitution(path)


def test_a_function_checker_and_missing_files(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text("def mentions_prompt(prompt, response):\n    return prompt in response\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    constitution = parse_constitution({"principles": [dict(PRINCIPLE, checker={"function": "my_checks:mentions_prompt"})]})
    assert constitution.principles[0].complies("cat", "a cat") and not constitution.principles[0].complies("cat", "x")
    assert constitution.name == "constitution"
    with pytest.raises(ConfigError, match="no such file"):
        load_constitution(tmp_path / "missing.yaml")
