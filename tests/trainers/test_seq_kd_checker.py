"""Sequence-level KD with a checker: only the teacher completions whose answer the task's checker accepts (against the
answer of the data's own completion) carry loss; kept and dropped counts are logged per step and in
evaluation.json. The teacher's sampler is replaced by a scripted one, so which completions are right is known."""

import json
from types import SimpleNamespace

import pytest
import torch

from posttrain.api import train
from posttrain.data import Example
from posttrain.data.batching import collate
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model
from posttrain.trainers import gkd
from posttrain.trainers.gkd import GKDConfig, GKDMethod, checker_accepts

ROWS = [("What is 2 + 3?", " 2 + 3 = 5. The answer is 5."), ("What is 7 - 4?", " 7 - 4 = 3. The answer is 3."),
        ("What is 6 + 1?", " 6 + 1 = 7. The answer is 7."), ("What is 9 - 9?", " The answer is 0.")]
# what the scripted teacher answers to each question: right, wrong, right in another wording, wrong format only
TEACHER = {"What is 2 + 3?": "2 + 3 = 5. The answer is 5.", "What is 7 - 4?": "7 - 4 = 4. The answer is 4.",
           "What is 6 + 1?": "Adding them gives 7", "What is 9 - 9?": "The answer is nine."}


def scripted_sample(answers):
    """A stand-in for ``posttrain.rollout.sample``: the completion of ``answers`` whose question is in the prompt."""
    def sample(model, tokenizer, prompt_ids, params, **kwargs):
        texts = []
        for ids in prompt_ids:
            prompt = tokenizer.decode(ids)
            texts.append(next(text for question, text in answers.items() if question in prompt))
        tokens = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
        width = max(map(len, tokens))
        ids = torch.full((len(tokens), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(tokens), width), dtype=torch.long)
        for row, t in enumerate(tokens):
            ids[row, : len(t)], mask[row, : len(t)] = torch.tensor(t), 1
        return SimpleNamespace(completion_ids=ids, completion_mask=mask, texts=texts, generation_time_s=0.0,
                               num_generated_tokens=int(mask.sum()))
    return sample


def _batch(tokenizer):
    examples = []
    for prompt, completion in ROWS:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = prompt_ids + tokenizer(completion)["input_ids"]
        examples.append(Example(ids, [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids)), prompt))
    return collate(examples, tokenizer.pad_token_id)


def test_checker_accepts_the_references_answer_in_any_wording():
    references = [completion for _, completion in ROWS] + ["no number here"]
    completions = [TEACHER[question] for question, _ in ROWS] + ["The answer is 1."]
    assert checker_accepts(gkd.get_task("arithmetic"), references, completions) == [True, False, True, False, False]


def test_rejected_teacher_completions_carry_no_loss(tokenizer, monkeypatch):
    monkeypatch.setattr(gkd, "sample", scripted_sample(TEACHER))
    config = GKDConfig(teacher="unused", lmbda=0.0, seq_kd=True, alpha=0.0, seq_kd_checker="arithmetic")
    method = GKDMethod(object(), config, tokenizer)
    batch = _batch(tokenizer)
    method.prepare_step(build_tiny_model().train(), [batch], step=0)

    carries_loss = batch["loss_mask"].sum(-1) > 0
    assert carries_loss.tolist() == [True, False, True, False]
    completion = batch["input_ids"][0][batch["loss_mask"][0].bool()].tolist()
    assert tokenizer.decode(completion, skip_special_tokens=True) == TEACHER["What is 2 + 3?"]  # the teacher's, kept
    assert (method.metrics["kd_kept"], method.metrics["kd_dropped"]) == (2, 2)
    assert method.checked == {"kept": 2, "dropped": 2}
    assert method.state_dict() == {"checked": {"kept": 2, "dropped": 2}}


def test_seq_kd_run_logs_kept_and_dropped_counts(tmp_path, write_jsonl, tokenizer, monkeypatch):
    monkeypatch.setattr(gkd, "sample", scripted_sample(TEACHER))
    rows = [{"prompt": prompt, "completion": completion} for prompt, completion in ROWS]
    teacher = tmp_path / "teacher"
    build_tiny_model(seed=1).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    evaluation = train({
        "method": "gkd", "model": "tiny", "teacher": str(teacher), "lmbda": 0.0, "seq_kd": True, "alpha": 0.0,
        "seq_kd_checker": "arithmetic", "output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4,
        "logging_steps": 1, "progress_bar": False, "data": {"path": str(write_jsonl("train.jsonl", rows))}})
    assert evaluation["seq_kd_checker"] == {"task": "arithmetic", "kept": 4, "dropped": 4}
    steps = [json.loads(line) for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    steps = [record for record in steps if "kd_kept" in record]
    assert [(r["kd_kept"], r["kd_dropped"]) for r in steps] == [(2, 2), (2, 2)]


@pytest.mark.parametrize("overrides,message", [
    ({"seq_kd_checker": "arithmetic"}, "needs seq_kd: true"),
    ({"seq_kd": True, "seq_kd_checker": "constraints"}, "numeric answer"),
    ({"seq_kd": True, "seq_kd_checker": "algebra"}, "unknown task 'algebra'"),
])
def test_bad_checker_settings_fail_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        GKDConfig(teacher="unused", **overrides)
