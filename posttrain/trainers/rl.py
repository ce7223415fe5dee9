"""What the online RL trainers (GRPO / RLOO / REINFORCE, PPO) share: prompts as engine examples, where problems come
from, the greedy held-out evaluation with its samples.jsonl, and evaluation.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from posttrain.data import load_rows
from posttrain.errors import ConfigError
from posttrain.rollout import SamplingParams, sample
from posttrain.tasks import Problem, get_task
from posttrain.trainers.common import PolicyTrainingConfig, read_log, run_summary


@dataclass
class OnlineRLConfig(PolicyTrainingConfig):
    """Prompts, rewards and sampling: the part of an online RL config that is not the algorithm."""

    task: str = "arithmetic"  # where prompts (and the default reward) come from, unless data.path is set
    task_options: dict[str, Any] = field(default_factory=dict)
    rewards: list[dict[str, Any]] = field(default_factory=list)  # [{name: task} | {function: "mod:fn"} | {model: dir}]
    num_train_prompts: int = field(default=2000, metadata={"min": 1})
    num_eval_prompts: int = field(default=200, metadata={"min": 0})
    max_new_tokens: int = field(default=64, metadata={"min": 1})
    temperature: float = field(default=1.0, metadata={"min": 0.01})
    top_p: float = field(default=1.0, metadata={"min": 0, "max": 1})
    top_k: int = field(default=0, metadata={"min": 0})
    stop_strings: list[str] = field(default_factory=list)
    # the dtype rollouts are sampled in. auto: the training precision's (bf16 under precision=bf16, else the policy's
    # dtype); bfloat16 is faster but a rounded policy samples, while the trainer scores every token at its own
    # precision (posttrain.rollout.SamplingParams.dtype)
    rollout_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    eval_samples: int = field(default=16, metadata={"min": 0})  # rows written to samples.jsonl at each evaluation


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


@torch.no_grad()
def greedy_evaluation(config: OnlineRLConfig, policy, tokenizer, prompt_ids, problems, reward, task,
                      step: int) -> dict[str, float]:
    """Greedy answers to the held-out prompts: mean reward, task accuracy, length; samples.jsonl gets a few rows."""
    was_training = policy.training
    policy.eval()
    params = SamplingParams(config.max_new_tokens, 0.0, stop_strings=tuple(config.stop_strings))
    rollout = sample(policy, tokenizer, prompt_ids, params)
    policy.train(was_training)
    rewards, _ = reward([p.prompt for p in problems], rollout.texts, problems)
    result = {"eval_reward": sum(rewards) / len(rewards),
              "eval_completion_length": float(rollout.completion_mask.sum(-1).float().mean()),
              "eval_truncated_fraction": float(rollout.truncated.float().mean()), "eval_items": len(problems)}
    if task is not None:
        correct = [task.is_correct(p, text) for p, text in zip(problems, rollout.texts)]
        result["eval_accuracy"] = sum(correct) / len(correct)
    path = Path(config.output_dir) / "samples.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        for problem, text, value in list(zip(problems, rollout.texts, rewards))[: config.eval_samples]:
            handle.write(json.dumps({"step": step, "prompt": problem.prompt, "answer": problem.answer,
                                     "completion": text, "reward": value}) + "\n")
    return result


def rl_evaluation(config: OnlineRLConfig, model, state: dict) -> dict:
    """evaluation.json: held-out greedy accuracy and reward after training, the step-0 values as baseline."""
    evals = [r for r in read_log(config.output_dir) if "eval_reward" in r]
    result = run_summary(config, model, state)
    names = ("eval_accuracy", "eval_reward", "eval_completion_length", "eval_truncated_fraction")
    if evals:
        last = evals[-1]
        result["metrics"] = {n[5:]: {"value": last[n], "n_prompts": last["eval_items"]} for n in names if n in last}
        if evals[0]["step"] == 0 and state["step"] > 0:
            result["baseline"] = {n[5:]: evals[0][n] for n in names if n in evals[0]}
    return result
