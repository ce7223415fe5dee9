"""Constraints: each checker on satisfying, violating and malformed responses; fraction reward."""

import json

import pytest

from posttrain.errors import ConfigError
from posttrain.tasks import Problem, check_constraint, get_task


def test_lowercase():
    spec = {"type": "lowercase"}
    assert check_constraint(spec, "all quiet here, 3 owls.")
    assert not check_constraint(spec, "All quiet here.")
    assert not check_constraint(spec, "")  # no letters: nothing was written in lowercase
    assert not check_constraint(spec, "123 !!")


def test_bullets():
    spec = {"type": "bullets", "n": 3}
    assert check_constraint(spec, "Here you go:\n- one\n- two\n- three")
    assert check_constraint(spec, "* one\n  * two\n\u2022 three\n")
    assert not check_constraint(spec, "- one\n- two")
    assert not check_constraint(spec, "- one\n- two\n- three\n- four")
    assert not check_constraint(spec, "1. one\n2. two\n3. three")  # numbered, not bullets
    assert not check_constraint(spec, "**bold**\n---\n-\n- ")  # markers without text, emphasis, rules


def test_keyword():
    spec = {"type": "keyword", "word": "owl"}
    assert check_constraint(spec, "An Owl hoots.")
    assert check_constraint(spec, "the owl.")
    assert not check_constraint(spec, "Owls hoot.")  # whole word
    assert not check_constraint(spec, "a bowl")
    assert not check_constraint(spec, "")


def test_json():
    spec = {"type": "json", "key": "summary"}
    assert check_constraint(spec, '{"summary": "short"}')
    assert check_constraint(spec, '  ```json\n{"summary": "short", "n": 1}\n```  ')
    assert not check_constraint(spec, '{"title": "x"}')  # missing key
    assert not check_constraint(spec, '["summary"]')  # not an object
    assert not check_constraint(spec, '{"summary": "short"')  # malformed
    assert not check_constraint(spec, 'Sure! {"summary": "short"}')  # not JSON only
    assert check_constraint({"type": "json", "key": None}, "{}")


def test_max_words():
    spec = {"type": "max_words", "n": 5}
    assert check_constraint(spec, "one two three - four five")  # "-" is not a word
    assert not check_constraint(spec, "one two three four five six")
    assert not check_constraint(spec, "   ")


def test_reward_is_the_fraction_satisfied():
    task = get_task("constraints")
    specs = [{"type": "lowercase"}, {"type": "bullets", "n": 2}, {"type": "keyword", "word": "green"}]
    p = Problem("Describe owls. ...", json.dumps(specs), {})
    assert task.reward(p, "- owls are green\n- they hoot") == 1.0 and task.is_correct(p, "- owls are green\n- x")
    assert task.reward(p, "- Owls are green\n- they hoot") == pytest.approx(2 / 3)
    assert task.reward(p, "Owls hoot.") == 0.0 and not task.is_correct(p, "Owls hoot.")
    single = Problem("...", json.dumps([{"type": "lowercase"}]), {})
    assert {task.reward(single, "yes"), task.reward(single, "Yes")} == {1.0, 0.0}


def test_generated_problems():
    task = get_task("constraints", min_constraints=2, max_constraints=3)
    for p in task.problems("train", 200, seed=1):
        specs = json.loads(p.answer)
        kinds = [s["type"] for s in specs]
        assert 2 <= len(specs) <= 3 and len(set(kinds)) == len(kinds)
        assert not {"json", "bullets"} <= set(kinds)
        assert p.prompt.startswith(p.meta["request"]) and p.meta["constraints"] == specs
    only = get_task("constraints", types=["json"]).problems("eval", 5)
    assert all(json.loads(p.answer)[0]["type"] == "json" for p in only)
    good = only[0]
    assert get_task("constraints").reward(good, json.dumps({json.loads(good.answer)[0]["key"]: "x"})) == 1.0


@pytest.mark.parametrize("options", [{"types": ["shouting"]}, {"types": []}, {"min_constraints": 0},
                                     {"min_constraints": 3, "max_constraints": 2}])
def test_bad_options(options):
    with pytest.raises(ConfigError, match="constraints"):
        get_task("constraints", **options)
