"""Self-consistency's majority vote on fixed samples: unparsed chains do not vote, ties go to the earliest answer."""

from posttrain.tasks.voting import majority_vote, self_consistent_answer


def test_majority_vote():
    assert majority_vote([3, 5, 3, None, 5, 3]) == (3, 3)
    assert majority_vote([None, None]) == (None, 0)
    assert majority_vote([]) == (None, 0)
    assert majority_vote([7, 4, 4, 7]) == (7, 2)  # tie: 7 came first
    assert majority_vote([None, 4, 7, 7, 4]) == (4, 2)


def test_self_consistent_answer_parses_each_chain():
    samples = ["12 + 5 = 17. The answer is 17.", "12 + 5 = 18. The answer is 18.", "I think 17",
               "no number here", "The answer is 18.", "12 + 5 = 17, so the answer is 17"]
    assert self_consistent_answer(samples) == (17, 3)
    assert self_consistent_answer(samples[:2] + samples[3:5]) == (18, 2)


def test_self_consistency_metric_votes_over_sampled_chains(tiny_model, tokenizer, monkeypatch):
    import types

    from posttrain.eval.context import EvalContext
    from posttrain.eval.metrics.answers import TaskAccuracyOptions, task_accuracy

    def fake_generate(policy, prompts, max_new_tokens, temperature=0.0, n=1, top_p=1.0):
        if n == 1:  # greedy: always wrong
            return types.SimpleNamespace(texts=["The answer is -1." for _ in prompts])
        problems = {p.prompt: int(p.answer) for p in get_task("word_problems").problems("eval", 6, 0)}
        texts = []
        for i, prompt in enumerate(prompts):  # even problems: 3 of 5 right; odd ones: a wrong answer 3 times
            answer = problems[prompt]
            right, wrong = f"so the answer is {answer}.", f"The answer is {answer + 1}."
            texts += [right, wrong, right, "no idea", right] if i % 2 == 0 else [right, wrong, wrong, right, wrong]
        return types.SimpleNamespace(texts=texts)

    from posttrain.tasks import get_task

    context = EvalContext(tiny_model, tokenizer, "tiny")
    monkeypatch.setattr(context, "generate", fake_generate)
    result = task_accuracy(context, TaskAccuracyOptions(task="word_problems", n=6, self_consistency=5))
    assert result.values["accuracy"].value == 0.0
    assert result.values["self_consistency@5"].value == 0.5
    assert [s["votes"] for s in result.samples] == [3] * 6
    assert [s["voted_correct"] for s in result.samples] == [True, False] * 3


def test_generate_with_self_consistency(capsys):
    import json

    from posttrain.cli import main
    from posttrain.tasks.voting import majority_vote

    assert main(["generate", "--model", "tiny", "--prompt", "What is 2 + 3?", "--max-new-tokens", "6",
                 "--self-consistency", "4", "--temperature", "1.0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == 4 and len(result["samples"]) == 4
    assert (result["answer"], result["votes"]) == majority_vote([s["answer"] for s in result["samples"]])
