"""Each metric against a direct computation, on the tiny in-process model or hand-made outputs."""

import json
import math
import statistics
import sys
import types

import pytest
import torch

from posttrain.data import encode_prompt_completion
from posttrain.eval.context import EvalContext
from posttrain.eval.estimators import pass_at_k
from posttrain.errors import DataError
from posttrain.eval.metrics.answers import (
    ProbeOptions,
    RewardOptions,
    TaskAccuracyOptions,
    probes,
    reward,
    task_accuracy,
    verbosity_values,
)
from posttrain.eval.metrics.likelihood import (
    KLOptions,
    PerplexityOptions,
    PreferenceOptions,
    kl,
    perplexity,
    preference_accuracy,
)
from posttrain.eval.prompts import DEFAULT_PROMPTS, load_prompts, parse_word_limit
from posttrain.models import LoraSettings, apply_lora, build_tiny_model
from posttrain.tasks import get_task


def lora_tiny(perturb: bool):
    """The tiny model with LoRA adapters; perturbed adapters make it differ from its base (adapters off)."""
    model = apply_lora(build_tiny_model(), LoraSettings(r=4, dropout=0.0))
    if perturb:
        generator = torch.Generator().manual_seed(1)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data = torch.randn(parameter.shape, generator=generator) * 0.5
    return model.eval()


def test_perplexity_is_exp_of_the_mean_completion_nll_from_the_logits(tiny_model, tokenizer, write_jsonl):
    rows = [{"prompt": "What is 2 + 3?", "completion": "The answer is 5."},
            {"prompt": "Name a colour.", "completion": "Blue, like the sky on a clear day."},
            {"prompt": "Say hi.", "completion": "Hi!"}]
    context = EvalContext(tiny_model.eval(), tokenizer, "tiny")
    result = perplexity(context, PerplexityOptions(data=str(write_jsonl("ppl.jsonl", rows)), batch_size=2))

    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt_ids, completion_ids = encode_prompt_completion(tokenizer, row["prompt"], row["completion"], True)
            logps = torch.log_softmax(tiny_model(torch.tensor([prompt_ids + completion_ids])).logits[0].float(), -1)
            for j, token in enumerate(completion_ids):  # position t predicts token t + 1
                total_nll -= float(logps[len(prompt_ids) + j - 1, token])
            total_tokens += len(completion_ids)
    assert result.values[""].value == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    assert result.values["nll_per_token"].value == pytest.approx(total_nll / total_tokens, rel=1e-5)
    assert result.values[""].n == 3 and result.details["tokens"] == total_tokens
    assert result.values[""].stderr > 0 and result.values[""].higher_is_better is False


def test_verbosity_and_compliance_on_hand_made_outputs():
    texts = ["One two three.", "- a b", "", "Hello, world! 3.5 apples"]
    values = verbosity_values(texts, token_counts=[4, 3, 0, 8], word_limits=[3, 1, 5, None])
    # words: 3, 2 (a lone "-" is no word), 0, 4
    assert values["words_mean"].value == pytest.approx(9 / 4)
    assert values["words_median"].value == 2.5
    assert values["words_std"].value == pytest.approx(1.7078251, rel=1e-6)
    assert values["tokens_mean"].value == pytest.approx(15 / 4) and values["tokens_median"].value == 3.5
    compliance = values["word_limit_compliance"]  # 3 <= 3 complies, 2 > 1 does not, an empty answer does not
    assert (compliance.value, compliance.n, compliance.higher_is_better) == (pytest.approx(1 / 3), 3, True)
    assert "word_limit_compliance" not in verbosity_values(["a b"], [2], [None])


def test_word_limits_parsed_from_prompts_match_the_shipped_set():
    assert parse_word_limit("Answer in at most 30 words.") == 30
    assert parse_word_limit("Keep it under 30 words.") == 29
    assert parse_word_limit("Use 25 words or fewer, no more than 20 words.") == 20
    assert parse_word_limit("Write a poem.") is None
    prompts = load_prompts(DEFAULT_PROMPTS)
    assert 30 <= len(prompts) <= 60 and sum(p.word_limit is not None for p in prompts) >= 10
    for p in prompts:  # the shipped limits say in data what the prompt says in words
        assert parse_word_limit(p.prompt) == p.word_limit, p.id


def test_pass_at_k_and_greedy_accuracy_from_known_answers(tiny_model, tokenizer, monkeypatch):
    task = get_task("arithmetic")
    problems = task.problems("eval", 10, seed=0)
    correct_counts = [i % 5 for i in range(10)]  # c_i of 4 samples

    def fake_generate(handle, prompts, max_new_tokens, temperature=0.0, samples=1, top_p=1.0):
        if temperature == 0.0:  # greedy: right on even problems
            texts = [f"The answer is {int(p.answer) + (i % 2)}." for i, p in enumerate(problems)]
        else:
            texts = [f"The answer is {int(p.answer) + (s >= c)}." for p, c in zip(problems, correct_counts)
                     for s in range(samples)]
        return types.SimpleNamespace(texts=texts)

    context = EvalContext(tiny_model, tokenizer, "tiny")
    monkeypatch.setattr(context, "generate", fake_generate)
    result = task_accuracy(context, TaskAccuracyOptions(n=10, samples=4, pass_at=[1, 2, 4]))
    assert result.values["accuracy"].value == 0.5
    for k in (1, 2, 4):
        expected = sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in correct_counts) / 10
        assert result.values[f"pass@{k}"].value == pytest.approx(expected)
        assert result.values[f"pass@{k}"].value == pytest.approx(sum(pass_at_k(4, c, k) for c in correct_counts) / 10)
    assert [s["sampled_correct"] for s in result.samples] == correct_counts


def test_a_reward_failing_on_one_sample_is_recorded_and_the_others_scored(tiny_model, tokenizer, monkeypatch):
    def flaky(prompts, completions, problems):
        if any(p.startswith("Why does the sea") for p in prompts):
            raise RuntimeError("cannot score this one")
        return [float(len(c)) for c in completions]

    monkeypatch.setitem(sys.modules, "fake_rewards", types.SimpleNamespace(flaky=flaky))
    context = EvalContext(tiny_model.eval(), tokenizer, "tiny")
    result = reward(context, RewardOptions(rewards=[{"function": "fake_rewards:flaky"}], limit=5, max_new_tokens=4))
    assert [f["index"] for f in result.failures] == [0] and "cannot score this one" in result.failures[0]["error"]
    assert result.values[""].n == 4 and result.samples[0]["reward"] is None
    assert [s["reward"]["total"] for s in result.samples[1:]] == [float(len(s["output"])) for s in result.samples[1:]]


def test_kl_is_zero_against_itself_and_positive_once_adapters_move(tokenizer):
    options = KLOptions(limit=3, max_new_tokens=8)
    same = kl(EvalContext(lora_tiny(perturb=False), tokenizer, "lora"), options)
    assert same.values[""].value == pytest.approx(0.0, abs=1e-6) and same.values[""].n == 3
    moved = kl(EvalContext(lora_tiny(perturb=True), tokenizer, "lora"), options)
    assert moved.values[""].value > 1e-3 and moved.values["per_token"].value > 0
    assert moved.details["reference"].endswith("(adapters off)")
    assert all(s["kl"] >= 0 for s in moved.samples)  # k3 never goes negative
    # several samples per prompt: prompts are the independent units, so n counts prompts and the value is the mean
    pooled = kl(EvalContext(lora_tiny(perturb=True), tokenizer, "lora"), KLOptions(limit=3, samples=2,
                                                                                   max_new_tokens=8))
    per_sample = [s["kl"] for s in pooled.samples]
    assert len(per_sample) == 6 and pooled.values[""].n == 3
    assert pooled.values[""].value == pytest.approx(sum(per_sample) / 6)
    by_prompt = [sum(s["kl"] for s in pooled.samples if s["prompt"] == p) / 2 for p in dict.fromkeys(
        s["prompt"] for s in pooled.samples)]
    assert pooled.values[""].stderr == pytest.approx(statistics.stdev(by_prompt) / math.sqrt(3))


def test_perplexity_records_rows_with_nothing_to_score(tiny_model, tokenizer, write_jsonl, monkeypatch):
    """A row whose only loss token is its first (nothing before it to predict from) is a recorded failure."""
    from posttrain.data import Example
    from posttrain.eval.metrics import likelihood

    real = likelihood.tokenize_sft

    def tokenize(rows, fmt, tokenizer, config):
        if rows[0].values["text"] == "Hi":
            return [Example([42], [1], rows[0].where)], None
        return real(rows, fmt, tokenizer, config)

    monkeypatch.setattr(likelihood, "tokenize_sft", tokenize)
    rows = [{"text": "Hello there, how are you today?"}, {"text": "Hi"}]
    context = EvalContext(tiny_model.eval(), tokenizer, "tiny")
    result = perplexity(context, PerplexityOptions(data=str(write_jsonl("cut.jsonl", rows))))
    assert result.values[""].n == 1 and result.values[""].value > 1
    assert [f["index"] for f in result.failures] == [1] and "no completion tokens" in result.failures[0]["error"]
    nothing = perplexity(context, PerplexityOptions(data=str(write_jsonl("hi.jsonl", rows[1:]))))
    assert nothing.values[""].value is None and nothing.values[""].n == 0 and len(nothing.failures) == 1


def test_probes_refuse_two_answers_for_one_request_and_variant(tiny_model, tokenizer, write_jsonl):
    rows = [{"id": "a", "group": "g", "variant": "plain", "prompt": "Hi?"},
            {"id": "b", "group": "g", "variant": "plain", "prompt": "Hello?"}]
    context = EvalContext(tiny_model.eval(), tokenizer, "tiny")
    with pytest.raises(DataError, match="group 'g' already has a 'plain' variant"):
        probes(context, ProbeOptions(rewards=[{"name": "verbosity"}], probes=str(write_jsonl("p.jsonl", rows))))


def test_kl_is_skipped_without_a_known_reference(tiny_model, tokenizer):
    result = kl(EvalContext(tiny_model.eval(), tokenizer, "tiny"), KLOptions(limit=2))
    assert result.skipped and "reference" in result.skipped


def test_preference_accuracy_counts_ties_as_half_and_falls_back_to_simpo(tokenizer):
    options = PreferenceOptions(limit=6)
    at_reference = preference_accuracy(EvalContext(lora_tiny(perturb=False), tokenizer, "lora"), options)
    assert at_reference.details["reward"] == "dpo"
    assert at_reference.values[""].value == 0.5 and at_reference.values["margin"].value == pytest.approx(0, abs=1e-6)
    # `auto` with no known base (a plain model, not an adapter nor a run's final/) falls back to SimPO's reward
    plain = build_tiny_model().eval()
    simpo = preference_accuracy(EvalContext(plain, tokenizer, "tiny"), options)
    assert simpo.details["reward"] == "simpo" and simpo.values[""].n == 6
    forced = preference_accuracy(EvalContext(lora_tiny(perturb=True), tokenizer, "lora"),
                                 PreferenceOptions(limit=6, reference="none"))
    assert forced.details["reward"] == "simpo"
    assert all(s["correct"] == float(s["chosen_reward"] > s["rejected_reward"]) for s in simpo.samples)
    json.dumps(simpo.samples)  # samples go to a JSONL file
