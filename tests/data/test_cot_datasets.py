"""The shipped multi-step CoT and scratchpad data: the files are the generators' (seeded), balanced, disjoint, and
each pair of files holds the same problems."""

import json
from collections import Counter
from pathlib import Path

from posttrain.data.cot import addition_rows, cot_rows
from posttrain.tasks import get_task
from posttrain.tasks.addition import check_scratchpad
from posttrain.tasks.steps import check_steps

DATA = Path(__file__).resolve().parents[2] / "data" / "cot"


def read(name):
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def test_multistep_files_are_balanced_same_problems_and_disjoint():
    cot, direct = read("multistep_cot_eval"), read("multistep_direct_eval")
    assert Counter(r["steps"] for r in cot) == {k: 60 for k in (2, 3, 4, 5, 6)}
    assert Counter(r["steps"] for r in read("multistep_cot_train")) == {k: 400 for k in (2, 3, 4, 5, 6)}
    assert [(r["answer"], r["steps"]) for r in cot] == [(r["answer"], r["steps"]) for r in direct]
    for c, d in zip(cot, direct):
        assert c["prompt"].split("?")[0] == d["prompt"].split("?")[0]
        assert check_steps(c["completion"]) == (c["steps"], c["steps"])
        assert d["completion"] == f"The answer is {d['answer']}."
    assert not {r["prompt"] for r in read("multistep_cot_train")} & {r["prompt"] for r in cot}
    assert cot_rows("eval", 30, num_steps=(2, 3, 4, 5, 6)) == (cot[:30], direct[:30])
    # the harness evaluates exactly these held-out problems: task_accuracy's prompts with the same options and seed
    task = get_task("word_problems", num_steps=[2, 3, 4, 5, 6])
    assert [p.prompt for p in task.problems("eval", 300, seed=0)] == [r["prompt"] for r in cot]


def test_addition_files_are_balanced_same_problems_and_disjoint():
    scratch, direct = read("addition_scratchpad_eval"), read("addition_direct_eval")
    assert Counter(r["digits"] for r in scratch) == {4: 150, 5: 150}
    assert [r["answer"] for r in scratch] == [r["answer"] for r in direct]
    for row in scratch:
        a, b = map(int, row["prompt"].removeprefix("What is ").split("?")[0].split(" + "))
        assert a + b == row["answer"] and check_scratchpad(a, b, row["completion"]) == (row["digits"],) * 2
    assert not {r["prompt"] for r in read("addition_scratchpad_train")} & {r["prompt"] for r in scratch}
    assert addition_rows("eval", 20) == (scratch[:20], direct[:20])
    assert read("addition_direct_train")[:20] == addition_rows("train", 20)[1]
