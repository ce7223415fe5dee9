"""The online RL layer that GRPO / RLOO / REINFORCE, PPO and online DPO share (and the on-policy distillation
trainer):

    prompts -> rollout (seeded by step) -> rewards -> token rows on the device -> [the method: advantages, loss]

plus where problems come from, what every method logs about a rollout, the greedy held-out evaluation with its
samples.jsonl, and evaluation.json. A trainer keeps only its algorithm: how advantages are estimated and its loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from posttrain.config import option
from posttrain.data import collate_sequences, load_rows
from posttrain.engine import Method, distributed, fsdp
from posttrain.engine.run_log import append_jsonl
from posttrain.errors import ConfigError
from posttrain.rollout import Rollout, SamplingParams, chat_prompts, sample
from posttrain.rollout.rewards import build_reward
from posttrain.tasks import Problem, get_task
from posttrain.trainers.common import (
    ModelFiles,
    PolicyTrainingConfig,
    evaluation_summary,
    load_policy,
    train_and_save,
    write_evaluation,
)


@dataclass
class OnlineRLConfig(PolicyTrainingConfig):
    """Prompts, rewards and sampling: the part of an online RL config that is not the algorithm."""

    task: str = option("arithmetic", help="where prompts (and the default reward) come from, unless data.path is set: "
                                          "arithmetic, word_problems, constraints, verbosity or long_addition "
                                          "(posttrain.tasks)")
    task_options: dict[str, Any] = option(
        default_factory=dict, help="keyword options of the task's generator, e.g. {digits: 2, operations: '+-'}")
    rewards: list[dict[str, Any]] = option(
        default_factory=list, help="reward functions, each with an optional weight: {name: TASK} | {function: "
                                   "'module:fn'} | {model: FOLDER}; empty: the task's reward")
    num_train_prompts: int = option(2000, min=1, help="training problems drawn from the task's seeded generator")
    num_eval_prompts: int = option(200, min=0, help="held-out problems drawn for evaluation (greedy answers, task "
                                                    "accuracy)")
    max_new_tokens: int = option(64, min=1, help="longest completion sampled, in tokens")
    temperature: float = option(1.0, min=0.01, help="sampling temperature of rollouts; log-probs are computed at it "
                                                    "too (logits / T)")
    top_p: float = option(1.0, min=0, max=1, help="nucleus sampling: sample from the smallest token set whose "
                                                  "probability reaches top_p; 1: off")
    top_k: int = option(0, min=0, help="sample from the k most likely tokens only; 0: off")
    stop_strings: list[str] = option(default_factory=list, help="strings that end a completion (besides EOS)")
    rollout_dtype: Literal["auto", "float32", "bfloat16"] = option(
        "auto", help="the dtype rollouts are sampled in; auto: the training precision's (bf16 under precision=bf16, "
                     "else the policy's dtype); bfloat16 is faster, but a rounded policy samples while the trainer "
                     "scores every token at its own precision (posttrain.rollout.SamplingParams.dtype)")
    eval_samples: int = option(16, min=0, help="rows written to samples.jsonl at each evaluation")


@dataclass
class PromptExample:
    """A prompt the engine batches; the rollout turns it into completions."""

    prompt_ids: list[int]
    index: int

    def __len__(self) -> int:
        return len(self.prompt_ids)


def prompt_batch(examples: list[PromptExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The engine's collate for prompts: only their indices (the rollout fills the batch)."""
    return {"example_index": torch.tensor([e.index for e in examples])}


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of the rollout at ``step``: a pure function of (seed, step), so a resumed run samples
    what the uninterrupted one did."""
    return seed * 1_000_003 + step


# ------------------------------------------------------------------------------------------ prompts and rewards
@dataclass
class OnlineRLSetup:
    """Everything an online RL method works on besides its models: problems, their chat prompts, the reward."""

    task: Any  # the Task whose checker scores answers (None with data.path and no task)
    train_problems: list[Problem]
    eval_problems: list[Problem]
    reward: Any  # posttrain.rollout.CombinedReward: (prompts, completions, problems) -> (totals, per function)
    prompt_ids: list[list[int]]
    eval_prompt_ids: list[list[int]]

    def examples(self) -> tuple[list[PromptExample], list[PromptExample]]:
        return ([PromptExample(ids, i) for i, ids in enumerate(self.prompt_ids)],
                [PromptExample(ids, i) for i, ids in enumerate(self.eval_prompt_ids)])


def load_online_rl(config: OnlineRLConfig, reward_specs: Callable[[Any], list[dict]] | None = None):
    """``(policy, tokenizer, setup)``: the policy to train, and the problems, prompts and reward to train it on.
    ``reward_specs(task)`` gives the reward list (default: the config's ``rewards``; with none, the task's checker)."""
    policy, tokenizer = load_policy(config)
    task, train_problems, eval_problems = load_problems(config)
    reward = build_reward(reward_specs(task) if reward_specs else config.rewards, task)
    setup = OnlineRLSetup(task, train_problems, eval_problems, reward,
                          chat_prompts(tokenizer, [p.prompt for p in train_problems]),
                          chat_prompts(tokenizer, [p.prompt for p in eval_problems]))
    return policy, tokenizer, setup


def load_problems(config: OnlineRLConfig):
    """``(task, train, held_out)``: problems from the task's seeded generator, or prompts (+ answers) from data.path."""
    if config.data.path:
        def problems(path, split):
            rows = load_rows(path, split)
            missing = [r.where for r in rows if "prompt" not in r.values]
            if missing:
                raise ConfigError(f"{missing[0]}: RL prompts need a 'prompt' column")
            return [Problem(r.values["prompt"], str(r.values.get("answer", "")), dict(r.values)) for r in rows]

        task = get_task(config.task, **config.task_options) if config.task else None
        train = problems(config.data.path, config.data.split)
        held_out = problems(config.data.eval_path or config.data.path, config.data.eval_split) \
            if (config.data.eval_path or config.data.eval_split) else []
        return task, train, held_out
    task = get_task(config.task, **config.task_options)
    return task, task.problems("train", config.num_train_prompts, config.seed), \
        task.problems("eval", config.num_eval_prompts, config.seed)


def rollout_params(config: OnlineRLConfig) -> SamplingParams:
    """How training rollouts are sampled. (Held-out evaluation is greedy and always in the policy's own dtype.)"""
    return SamplingParams(config.max_new_tokens, config.temperature, config.top_p, config.top_k,
                          tuple(config.stop_strings), config.seed,
                          dtype=None if config.rollout_dtype == "auto" else config.rollout_dtype)


# --------------------------------------------------------------------------------------------------- rollouts
@dataclass
class ScoredRollout:
    """Completions sampled for a step's prompts and their rewards, as token rows on the policy's device."""

    rollout: Rollout
    rewards: torch.Tensor  # (N,) the weighted total reward of each completion
    per_function: dict[str, list[float]]  # each reward function's values, for logging
    rows: dict[str, torch.Tensor]  # input_ids, attention_mask, loss_mask (completion tokens) (N, T)


@torch.no_grad()
def sample_and_score(policy, tokenizer, prompt_ids: list[list[int]], problems: list[Problem], sampling: SamplingParams,
                     reward, group_size: int = 1) -> ScoredRollout:
    """Steps 1-2 of every online method: ``group_size`` completions per prompt sampled from ``policy``, scored by
    ``reward``, and collated into token rows (prompt + completion, loss on the completion)."""
    with fsdp.full_weights(policy):  # under FSDP: gathered once for the whole sampling loop
        rollout = sample(policy, tokenizer, prompt_ids, sampling, group_size=group_size)
    row_problems = [problems[i] for i in rollout.prompt_index.tolist()]
    totals, per_function = reward([p.prompt for p in row_problems], rollout.texts, row_problems)
    lengths = rollout.completion_mask.sum(-1)
    sequences = [(rollout.prompt_ids[i], rollout.completion_ids[i, : lengths[i]].tolist()) for i in range(len(totals))]
    device = next(policy.parameters()).device
    rows = {k: v.to(device) for k, v in collate_sequences(sequences, tokenizer.pad_token_id).items()}
    return ScoredRollout(rollout, torch.tensor(totals, dtype=torch.float32), per_function, rows)


def rollout_metrics(scored: ScoredRollout) -> dict[str, float]:
    """What every online method logs about a rollout: rewards (total and per function), completion lengths,
    truncation, and generation speed."""
    rollout, rewards = scored.rollout, scored.rewards
    lengths = rollout.completion_mask.sum(-1).float()
    return {
        "reward": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
        **{f"reward/{name}": sum(v) / len(v) for name, v in scored.per_function.items()},
        "completion_length": float(lengths.mean()), "completion_length_max": float(lengths.max()),
        "truncated_fraction": float(rollout.truncated.float().mean()),
        "generation_s": rollout.generation_time_s,
        "generation_tokens_per_s": rollout.num_generated_tokens / max(rollout.generation_time_s, 1e-9),
    }


class OnlineRLMethod(Method):
    """The part of an online RL method that is not its algorithm: prompts in, seeded rollouts with rewards out,
    and the greedy held-out evaluation (with samples.jsonl)."""

    outputs: tuple[str, ...] = ("samples.jsonl",)
    collate = staticmethod(prompt_batch)

    def __init__(self, config: OnlineRLConfig, tokenizer, setup: OnlineRLSetup):
        self.config, self.tokenizer, self.setup = config, tokenizer, setup
        self.sampling = rollout_params(config)

    def policy(self, model):
        """The causal LM inside the engine's model (PPO's holds a critic beside it)."""
        return model

    def sample_and_score(self, model, example_index: torch.Tensor, step: int, group_size: int = 1) -> ScoredRollout:
        self.sampling.seed = rollout_seed(self.config.seed, step)
        indices = example_index.tolist()
        self.sampling.prompt_offset = distributed.items_before_rank(len(indices))  # under torchrun: rank's share
        return sample_and_score(self.policy(model), self.tokenizer, [self.setup.prompt_ids[i] for i in indices],
                                [self.setup.train_problems[i] for i in indices], self.sampling, self.setup.reward,
                                group_size)

    def evaluate(self, model, step: int) -> dict[str, float]:
        return greedy_evaluation(self.config, self.policy(model), self.tokenizer, self.setup.eval_prompt_ids,
                                 self.setup.eval_problems, self.setup.reward, self.setup.task, step)


@torch.no_grad()
def greedy_evaluation(config: OnlineRLConfig, policy, tokenizer, prompt_ids, problems, reward, task,
                      step: int) -> dict[str, float]:
    """Greedy answers to the held-out prompts: mean reward, task accuracy, length; samples.jsonl gets a few rows."""
    params = SamplingParams(config.max_new_tokens, 0.0, stop_strings=tuple(config.stop_strings))
    with fsdp.full_weights(policy):
        rollout = sample(policy, tokenizer, prompt_ids, params)
    rewards, _ = reward([p.prompt for p in problems], rollout.texts, problems)
    result = {"eval_reward": sum(rewards) / len(rewards),
              "eval_completion_length": float(rollout.completion_mask.sum(-1).float().mean()),
              "eval_truncated_fraction": float(rollout.truncated.float().mean()), "eval_items": len(problems)}
    if task is not None:
        correct = [task.is_correct(p, text) for p, text in zip(problems, rollout.texts)]
        result["eval_accuracy"] = sum(correct) / len(correct)
    if distributed.is_main():
        append_jsonl(Path(config.output_dir) / "samples.jsonl",
                     [{"step": step, "prompt": problem.prompt, "answer": problem.answer, "completion": text,
                       "reward": value}
                      for problem, text, value in list(zip(problems, rollout.texts, rewards))[: config.eval_samples]])
    return result


# ------------------------------------------------------------------------------------------------- the run
def train_online(config: OnlineRLConfig, model, tokenizer, method: OnlineRLMethod, callbacks=None,
                 files: ModelFiles | None = None) -> dict:
    """The engine run of an online method on its prompts, then evaluation.json: held-out greedy accuracy and reward
    after training, the step-0 values as baseline."""
    train_examples, eval_examples = method.setup.examples()
    run = train_and_save(config, model, tokenizer, method, train_examples, eval_examples, callbacks, files)
    policy = method.policy(model)
    names = ("eval_accuracy", "eval_reward", "eval_completion_length", "eval_truncated_fraction")
    summary = evaluation_summary(config, policy, run, lambda record: {n[5:]: record[n] for n in names if n in record},
                                 "n_prompts")
    return write_evaluation(config, summary, policy, tokenizer)


def gather_rollout(rows: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Every rank's rollout rows, in rank order, right-padded to the widest rank's width (input_ids with the pad
    token, everything else with 0): the rows one process would have collated from the same completions."""
    gathered = {name: distributed.gather_tensors(value) for name, value in rows.items()}
    widths = [part.shape[1] for part in gathered["input_ids"]]  # each rank's T; (N, T - 1) tensors pad as much
    out = {}
    for name, parts in gathered.items():
        fill = pad_token_id if name == "input_ids" else 0
        out[name] = torch.cat([part if part.dim() == 1 else torch.nn.functional.pad(part, (0, max(widths) - w),
                                                                                   value=fill)
                               for part, w in zip(parts, widths)])
    return out
