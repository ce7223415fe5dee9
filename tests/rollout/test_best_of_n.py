"""Best-of-n returns the candidate the scorer ranks first; the CLI prints it."""

import pytest

from posttrain.cli import main
from posttrain.models import build_tiny_model
from posttrain.rollout.best_of_n import best_of_n, rank_candidates
from posttrain.rollout.judges import RewardModelJudge, RuleJudge, Verdict


def vowels(prompts, completions, problems=None):
    return [float(sum(c in "aeiou" for c in text)) for text in completions]


@pytest.mark.parametrize("judge", [RuleJudge(vowels), RewardModelJudge(lambda p, c: vowels(p, c))],
                         ids=["rule", "reward_model"])
def test_best_of_n_returns_the_argmax_of_the_scorer(judge, tokenizer):
    model = build_tiny_model(seed=4).eval()
    results = best_of_n(model, tokenizer, ["Say something.", "Count to three."], 6, judge, max_new_tokens=8, seed=3)
    for result in results:
        values = vowels(None, result["candidates"])
        assert len(result["candidates"]) == 6 and len(set(values)) > 1  # a choice to make
        assert vowels(None, [result["best"]])[0] == max(values)
        assert result["best"] == result["candidates"][values.index(max(values))]  # ties: the earliest sample


def test_pairwise_verdicts_rank_by_borda_count():
    def judge(prompts, firsts, seconds, problems=None):  # "c" beats all, "a" beats "b"
        order = {"c": 2, "a": 1, "b": 0}
        return [Verdict(0.8 if order[x] > order[y] else 0.2) for x, y in zip(firsts, seconds)]

    scores = rank_candidates(judge, ["p"], [["a", "b", "c", "a"]])[0]
    assert scores == pytest.approx([0.5, 0.2, 0.8, 0.5])


def test_generate_best_of_from_the_command_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "judge_rules.py").write_text("def shorter(prompts, completions, problems):\n"
                                             "    return [-float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["generate", "--model", "tiny", "--prompt", "hi", "--best-of", "3", "--max-new-tokens", "4",
                 "--judge", "{rule: 'judge_rules:shorter'}"]) == 0
    assert capsys.readouterr().out.strip() != ""
    assert main(["generate", "--model", "tiny", "--prompt", "hi", "--best-of", "3"]) == 2  # no judge: an error


def test_best_of_n_in_the_harness_picks_by_the_judge_and_equals_pass_at_n_with_the_checker(tiny_model, tokenizer,
                                                                                          monkeypatch):
    import types

    from posttrain.errors import ConfigError
    from posttrain.eval.context import EvalContext
    from posttrain.eval.metrics.answers import TaskAccuracyOptions, task_accuracy
    from posttrain.tasks import get_task

    problems = get_task("arithmetic").problems("eval", 4, 0)
    answers = {p.prompt: int(p.answer) for p in problems}

    def fake_generate(policy, prompts, max_new_tokens, temperature=0.0, samples=1, top_p=1.0):
        if samples == 1:
            return types.SimpleNamespace(texts=["no idea" for _ in prompts])
        texts = []
        for i, prompt in enumerate(prompts):  # the right answer on problems 0 and 2; a near miss everywhere
            y = answers[prompt]
            texts += [f"The answer is {y + 1000}.", f"The answer is {y + 1}.",
                      f"The answer is {y}." if i % 2 == 0 else f"The answer is {y + 500}."]
        return types.SimpleNamespace(texts=texts)

    context = EvalContext(tiny_model, tokenizer, "tiny")
    monkeypatch.setattr(context, "generate", fake_generate)
    result = task_accuracy(context, TaskAccuracyOptions(n=4, samples=3, pass_at=[3], best_of=3,
                                                        judge={"rule": "arithmetic"}))
    assert result.values["best_of@3"].value == result.values["pass@3"].value == 0.5
    # the checker's reward ranks the exact answer first, then the near miss (partial credit): its argmax
    assert [s["best_output"] for s in result.samples] == [
        f"The answer is {answers[p.prompt] + (0 if i % 2 == 0 else 1)}." for i, p in enumerate(problems)]
    assert [s["best_correct"] for s in result.samples] == [True, False, True, False]
    with pytest.raises(ConfigError, match="best_of and judge"):
        TaskAccuracyOptions(best_of=3)
