"""`posttrain eval --lm-eval`: a task defined in a local YAML file (no network) runs through EleutherAI's harness on
the tiny model; its accuracy equals the argmax of the continuation log-likelihoods computed here independently,
and lands in evaluation.json where `posttrain compare` reads it."""

import json

import pytest
import torch

from posttrain.cli import main
from posttrain.models import build_tiny_model, load_tokenizer

DOCS = [{"question": f"What is {a} + {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b)], "label": 0}
        for a, b in [(2, 3), (4, 4), (7, 1), (5, 6), (9, 2), (3, 8)]]


def _task(tmp_path):
    data = tmp_path / "arithmetic.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "arithmetic.yaml").write_text(f"""task: posttrain_arithmetic_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return tasks


def _expected_accuracy(model, tokenizer) -> float:
    """lm-eval's multiple choice: log P(" " + choice | context), summed over the continuation's tokens, argmax."""
    correct = 0
    for doc in DOCS:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logps = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(float(logps[t - 1, whole[t]]) for t in range(n_context, len(whole))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    return correct / len(DOCS)


def test_a_local_task_runs_through_the_harness_and_lands_in_evaluation_json(tmp_path, capsys):
    folder = tmp_path / "model"
    model, tokenizer = build_tiny_model(seed=3), load_tokenizer("tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "lm_eval.json"
    assert main(["eval", "--model", str(folder), "--lm-eval", "posttrain_arithmetic_mc", "--lm-eval-include",
                 str(_task(tmp_path)), "--out", str(out), "--device", "cpu"]) == 0
    evaluation = json.loads(out.read_text())
    accuracy = evaluation["metrics"]["lm_eval/posttrain_arithmetic_mc/acc"]
    assert accuracy["n"] == len(DOCS) and accuracy["higher_is_better"] is True
    assert accuracy["value"] == pytest.approx(_expected_accuracy(model.eval(), tokenizer))
    assert evaluation["status"] == "complete" and not evaluation["failed_metrics"]
    assert main(["compare", str(out), str(out)]) == 0
    assert "lm_eval/posttrain_arithmetic_mc/acc" in capsys.readouterr().out


def test_an_unknown_task_is_named(tmp_path):
    from posttrain.api import evaluate

    result = evaluate("tiny", [{"metric": "lm_eval", "tasks": ["no_such_task"], "include_path": str(_task(tmp_path))}],
                      out=tmp_path / "e.json")
    assert "unknown task(s) no_such_task" in result["entries"]["lm_eval"]["error"]
