"""Metrics computed from token log-probabilities: perplexity, KL to a reference model, preference accuracy.

All of them score sequences with the training forward (``posttrain.models.forward.token_logps``: the vocabulary
projection only at the positions that carry loss), under ``torch.no_grad``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from posttrain.config import option
from posttrain.data import DataConfig, Example, collate, load_rows, normalize_rows, tokenize_sft
from posttrain.data.preference import tokenize_pairs
from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext, ModelHandle, require_same_vocabulary
from posttrain.eval.estimators import mean_and_standard_error, ratio_and_standard_error
from posttrain.eval.estimators import perplexity as perplexity_of
from posttrain.eval.prompts import (
    DEFAULT_PERPLEXITY_DATA,
    DEFAULT_PREFERENCE_DATA,
    DEFAULT_PROMPTS,
    load_prompts,
    resolve_path,
)
from posttrain.eval.result import MetricResult, Value, score_each, try_each
from posttrain.math import kl_estimate
from posttrain.math.preference import dpo_loss, simpo_loss
from posttrain.models.forward import token_logps

NO_BASE = ("no reference model: the evaluated model is neither a LoRA adapter nor a run's final/ whose config.json "
           "names the model it started from; set `reference: MODEL_SPEC`")


@torch.no_grad()
def scored_token_logps(handle: ModelHandle, examples: list[Example], batch_size: int) -> list[torch.Tensor]:
    """log pi(y_t | y_<t) at the tokens each example's loss mask marks, as one 1-D float32 tensor per example.
    Examples are batched by length, so batches carry little padding."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    device = next(handle.model.parameters()).device
    with handle.active():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([examples[i] for i in chunk], handle.tokenizer.pad_token_id)
            stats, mask = token_logps(handle.model, {k: v.to(device) for k, v in batch.items()})
            for row, i in enumerate(chunk):
                out[i] = stats.logps[row][mask[row]].float().cpu()
    return out


def completion_example(prompt_ids: list[int], completion_ids: list[int]) -> Example:
    """prompt + completion with the loss mask on the completion only."""
    return Example(list(prompt_ids) + list(completion_ids), [0] * len(prompt_ids) + [1] * len(completion_ids))


# ---------------------------------------------------------------------------------------------------- perplexity
@dataclass
class PerplexityOptions:
    data: str = option(DEFAULT_PERPLEXITY_DATA, help="text, prompt/completion or messages rows (a file, folder or hub "
                                                     "id)")
    split: str | None = option(None, help="split and slice of data, e.g. test[:100]; None: the whole file")
    limit: int | None = option(64, min=1, help="the first N rows; None: all")
    max_length: int = option(1024, min=2, help="longest tokenized row, in tokens")
    batch_size: int = option(8, min=1, help="rows per forward pass")


def perplexity(context: EvalContext, options: PerplexityOptions) -> MetricResult:
    """PPL = exp( sum_i NLL_i / sum_i T_i ), NLL_i = -sum_{t in completion_i} log pi(y_t | y_<t), over completion
    tokens only (prompt tokens are given, not predicted; ``text`` rows score every token after the first). Also
    ``nll_per_token``, the mean NLL in nats. SEs treat sequences, not tokens, as the independent units."""
    tokenizer = context.policy.tokenizer
    config = DataConfig(max_length=options.max_length)
    fmt, rows = normalize_rows(load_rows(resolve_path(options.data), options.split)[: options.limit], config,
                               ("messages", "prompt_completion", "text"))
    result = MetricResult(details={"data": options.data, "format": fmt})
    examples = try_each(lambda row: tokenize_sft([row], fmt, tokenizer, config)[0][0], rows, result.failures,
                        "tokenize")
    kept = []
    for i, example in enumerate(examples):
        if example is not None and sum(example.loss_mask[1:]) == 0:
            result.failures.append({"index": i, "error": "no completion tokens to score (cut by max_length?)"})
        elif example is not None:
            kept.append(i)
    if not kept:  # every row failed: no value, but the failures are kept
        result.values = {"": Value(None, 0, None, False), "nll_per_token": Value(None, 0, None, False)}
        return result
    logps = scored_token_logps(context.policy, [examples[i] for i in kept], options.batch_size)
    nll = [-float(x.sum()) for x in logps]
    tokens = [x.numel() for x in logps]
    value, stderr = perplexity_of(nll, tokens)
    mean_nll, nll_stderr = ratio_and_standard_error(nll, tokens)
    result.values = {"": Value(value, len(kept), stderr, higher_is_better=False),
                     "nll_per_token": Value(mean_nll, len(kept), nll_stderr, higher_is_better=False)}
    result.details["tokens"] = sum(tokens)
    result.samples = [{"index": i, "where": rows[i].where, **rows[i].values, "tokens": n, "nll": s,
                       "perplexity": math.exp(s / n)} for i, n, s in zip(kept, tokens, nll)]
    return result


# ------------------------------------------------------------------------------------------------------------ KL
@dataclass
class KLOptions:
    reference: str = option("auto", help="a model spec, or auto: the model the evaluated one was fine-tuned from")
    prompts: str = option(DEFAULT_PROMPTS, help="the prompt set answered (a .jsonl/.txt file)")
    limit: int | None = option(None, min=1, help="the first N prompts; None: all")
    samples: int = option(1, min=1, help="completions sampled per prompt")
    max_new_tokens: int = option(96, min=1, help="longest sampled completion, in tokens")
    estimator: Literal["k1", "k2", "k3"] = option("k3", help="estimator of KL(policy || reference) per token (Schulman "
                                                             "2020)")
    batch_size: int = option(8, min=1, help="sequences per scoring forward pass")


def kl(context: EvalContext, options: KLOptions) -> MetricResult:
    """KL(pi || pi_ref) = E_{x, y ~ pi}[ sum_t KL_t ] on completions the evaluated model samples itself (temperature
    1, so they are draws from pi), with a per-token estimator KL_t of log pi(y_t | .) vs log pi_ref(y_t | .)
    (``posttrain.math.kl_estimate``; k3 is unbiased and never negative, Schulman 2020). The value is the mean
    sequence KL in nats; ``per_token`` divides by the completion tokens."""
    reference = context.base_model(options.reference)
    if reference is None:
        return MetricResult(skipped=NO_BASE)
    require_same_vocabulary(context.policy, reference, "kl")
    prompts = load_prompts(options.prompts, options.limit)
    rollout = context.generate(context.policy, [p.prompt for p in prompts], options.max_new_tokens, temperature=1.0,
                               samples=options.samples)
    lengths = rollout.completion_lengths.tolist()
    examples = [completion_example(p, ids[:n]) for p, ids, n in
                zip(rollout.prompt_ids, rollout.completion_ids.tolist(), lengths)]
    logps = scored_token_logps(context.policy, examples, options.batch_size)
    ref_logps = scored_token_logps(reference, examples, options.batch_size)
    sequence_kl = [float(kl_estimate(a, b, options.estimator).sum()) for a, b in zip(logps, ref_logps)]
    # the samples of one prompt are not independent of each other, prompts are: pool each prompt's, then average
    kl_by_prompt, tokens_by_prompt = [0.0] * len(prompts), [0] * len(prompts)
    for i, value, n in zip(rollout.prompt_index.tolist(), sequence_kl, lengths):
        kl_by_prompt[i] += value
        tokens_by_prompt[i] += n
    mean, stderr = mean_and_standard_error([total / options.samples for total in kl_by_prompt])
    per_token, per_token_stderr = ratio_and_standard_error(kl_by_prompt, tokens_by_prompt)
    row_prompts = [prompts[i] for i in rollout.prompt_index.tolist()]
    return MetricResult(
        values={"": Value(mean, len(prompts), stderr), "per_token": Value(per_token, len(prompts), per_token_stderr)},
        samples=[{"prompt": p.prompt, "output": text, "tokens": n, "kl": value}
                 for p, text, n, value in zip(row_prompts, rollout.texts, lengths, sequence_kl)],
        details={"reference": reference.label, "estimator": options.estimator, "temperature": 1.0},
    )


# ----------------------------------------------------------------------------------------- preference accuracy
@dataclass
class PreferenceOptions:
    data: str = option(DEFAULT_PREFERENCE_DATA, help="prompt / chosen / rejected rows (a file, folder or hub id)")
    split: str | None = option(None, help="split and slice of data, e.g. test[:100]; None: the whole file")
    limit: int | None = option(64, min=1, help="the first N pairs; None: all")
    reference: str = option("auto", help="reference of the DPO implicit reward: a model spec, auto (the base it was "
                                         "fine-tuned from, if known) or none (SimPO's length-normalised reward)")
    reward_model: str | None = option(None, help="score with a trained reward model folder instead of an implicit "
                                                 "reward; None: implicit reward")
    beta: float = option(0.1, min=0, help="scale of the implicit reward")
    max_length: int = option(1024, min=2, help="longest tokenized prompt + completion, in tokens")
    batch_size: int = option(8, min=1, help="sequences per forward pass")

    def __post_init__(self) -> None:
        if self.reward_model is not None and not Path(self.reward_model).is_dir():
            raise ConfigError(f"reward_model {self.reward_model!r}: no such folder (a reward run's final/)")


def preference_accuracy(context: EvalContext, options: PreferenceOptions) -> MetricResult:
    """Accuracy on held-out pairs: the share of pairs whose chosen answer gets the higher reward (a tie counts one
    half, as the trainers count it), with the reward, in order of preference:

        reward_model   r(x, y) from a trained reward model (explicit)
        dpo            r(x, y) = beta (log pi(y|x) - log pi_ref(y|x))   (Rafailov et al. 2023, implicit)
        simpo          r(x, y) = (beta / |y|) log pi(y|x)               (Meng et al. 2024, reference-free)

    ``auto`` uses dpo when the base model is known and simpo otherwise; ``margin`` is the mean r_w - r_l."""
    rows = load_rows(resolve_path(options.data), options.split)[: options.limit]
    _, rows = normalize_rows(rows, DataConfig(max_length=options.max_length), ("preference",))
    result = MetricResult()
    if options.reward_model is not None:
        scorer = context.reward_model(options.reward_model)
        prompts = [r.values["prompt"] for r in rows]
        chosen = score_each(scorer, [prompts, [r.values["chosen"] for r in rows]], result.failures, "reward model")
        rejected = score_each(scorer, [prompts, [r.values["rejected"] for r in rows]], result.failures, "reward model")
        kept = [i for i in range(len(rows)) if chosen[i] is not None and rejected[i] is not None]
        chosen_rewards = torch.tensor([chosen[i] for i in kept])
        rejected_rewards = torch.tensor([rejected[i] for i in kept])
        result.details = {"reward": "reward_model", "reward_model": options.reward_model}
    else:
        chosen_rewards, rejected_rewards, kept = implicit_rewards(context, options, rows, result)
    margins = (chosen_rewards - rejected_rewards).tolist()
    correct = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
    accuracy, stderr = mean_and_standard_error(correct)
    margin, margin_stderr = mean_and_standard_error(margins)
    result.values = {"": Value(accuracy, len(kept), stderr, higher_is_better=True),
                     "margin": Value(margin, len(kept), margin_stderr, higher_is_better=True)}
    result.samples = [{"prompt": rows[i].values["prompt"], "chosen": rows[i].values["chosen"],
                       "rejected": rows[i].values["rejected"], "chosen_reward": c, "rejected_reward": r,
                       "correct": ok} for i, c, r, ok in
                      zip(kept, chosen_rewards.tolist(), rejected_rewards.tolist(), correct)]
    return result


def implicit_rewards(context: EvalContext, options: PreferenceOptions, rows, result: MetricResult):
    """Implicit rewards of chosen and rejected under the evaluated model (and its reference, when there is one)."""
    config = DataConfig(max_length=options.max_length)
    pairs = try_each(lambda row: tokenize_pairs([row], context.policy.tokenizer, config)[0][0], rows,
                     result.failures, "tokenize")
    kept = [i for i, pair in enumerate(pairs) if pair is not None]
    examples = [completion_example(pairs[i].prompt_ids, ids) for i in kept
                for ids in (pairs[i].chosen_ids, pairs[i].rejected_ids)]
    lengths = torch.tensor([float(len(e.input_ids) - e.loss_mask.index(1)) for e in examples])
    sums = torch.stack([x.sum() for x in scored_token_logps(context.policy, examples, options.batch_size)])
    reference = None if options.reference == "none" else context.base_model(options.reference)
    if reference is None:
        out = simpo_loss(sums[0::2], sums[1::2], lengths[0::2], lengths[1::2], options.beta, gamma=0.0)
        result.details = {"reward": "simpo", "beta": options.beta}
    else:
        require_same_vocabulary(context.policy, reference, "preference_accuracy")
        ref_sums = torch.stack([x.sum() for x in scored_token_logps(reference, examples, options.batch_size)])
        out = dpo_loss(sums[0::2], sums[1::2], ref_sums[0::2], ref_sums[1::2], options.beta)
        result.details = {"reward": "dpo", "beta": options.beta, "reference": reference.label}
    return out.chosen_rewards, out.rejected_rewards, kept
