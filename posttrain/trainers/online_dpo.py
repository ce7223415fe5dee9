"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback",
https://arxiv.org/abs/2402.04792; TRL's ``OnlineDPOTrainer``): DPO on pairs the current policy samples and a judge
labels, step by step, instead of on a fixed preference file.

Algorithm (one optimizer step, on B prompts):
    1. rollout: two completions y_1, y_2 per prompt from the current policy pi_theta (``trainers/rl.py``)
    2. label: a judge (``posttrain.rollout.judges``: an LLM, a reward model, a rule) says which is better; without a
       judge, the higher reward of the configured reward functions (the task's checker by default). A pair without a
       preference (a tie, an abstention) carries no loss
    3. DPO on the fresh pairs (y_w, y_l), with pi_ref the initial policy (``posttrain.math.preference.dpo_loss``):
           h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
           L = -log sigma(beta h)   (sigmoid)      or    (h / |y| - 1 / (2 beta))^2 on per-token means (ipo)
    log-probs are taken at the sampling temperature, as the other online methods take them.
Logged: the rollout figures of every online method, the share of pairs labelled, DPO's implicit rewards, their
margin and accuracy, log-probs of chosen and rejected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from posttrain.config import option
from posttrain.engine import LossOutput, fsdp
from posttrain.math import masked_sum
from posttrain.math.preference import LENGTH_NORMALISED_DPO, dpo_loss, reward_metric_sums
from posttrain.models.forward import token_logps
from posttrain.rollout.judge_specs import build_judge, judge_kind, load_causal_lm
from posttrain.trainers.reference import ReferencePolicy
from posttrain.trainers.rl import OnlineRLConfig, OnlineRLMethod, load_online_rl, rollout_metrics, train_online


@dataclass
class OnlineDPOConfig(OnlineRLConfig):
    method: Literal["online_dpo"] = option("online_dpo", help="online DPO: DPO on pairs the policy samples each step")
    judge: dict[str, Any] | None = option(None, help="labels each pair (posttrain.rollout.judge_specs): {pairwise: "
                                                     "SPEC} | {reward_model: PATH} | {rule: TASK or 'module:fn'} | ...; "
                                                     "None: the higher reward of `rewards` (the task's checker)")
    batch_size: int = option(4, min=1, help="prompts per micro-batch (each gets two completions)")
    beta: float = option(0.1, min=0, help="DPO beta (IPO tau): the scale of the implicit reward")
    loss_type: Literal["sigmoid", "ipo"] = option("sigmoid", help="DPO's loss of the margin h: sigmoid (DPO) or ipo")
    learning_rate: float = option(5e-6, min=0, help="AdamW's peak learning rate, reached after warmup_steps")
    logging_steps: int = option(1, min=1, help="optimizer steps per log_history.jsonl record")

    def __post_init__(self) -> None:
        if self.judge is not None:
            judge_kind(self.judge, "judge")


def preference_order(first_better: list[bool | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices ``(chosen, rejected)`` into a rollout of two rows per prompt (rows 2i, 2i + 1), for the prompts
    with a preference (``first_better[i]``: True, False, or None for none)."""
    pairs = [(2 * i, 2 * i + 1) if first else (2 * i + 1, 2 * i)
             for i, first in enumerate(first_better) if first is not None]
    return torch.tensor([c for c, _ in pairs], dtype=torch.long), torch.tensor([r for _, r in pairs], dtype=torch.long)


class OnlineDPOMethod(OnlineRLMethod):
    """Rollout and labels in ``prepare_step``; the DPO loss on the labelled pairs in ``loss``."""

    fsdp = True  # tested under distributed.strategy: fsdp (tests/distributed); sampling gathers the full weights

    def __init__(self, config: OnlineDPOConfig, tokenizer, setup, reference: ReferencePolicy, judge=None):
        super().__init__(config, tokenizer, setup)
        self.reference, self.judge = reference, judge

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["input_ids"]) // 2 if "input_ids" in batch and "placeholder" not in batch else 0

    def label(self, scored) -> list[bool | None]:
        """Per prompt: is its first completion the better one (None: no preference)."""
        texts, problems = scored.rollout.texts, [self.setup.train_problems[i] for i in self.step_prompts]
        if self.judge is None:
            rewards = scored.rewards.view(-1, 2).tolist()
            return [None if a == b else a > b for a, b in rewards]
        verdicts = self.judge([p.prompt for p in problems], texts[0::2], texts[1::2], problems)
        return [None if v.preferred is None else v.preferred == 0 for v in verdicts]

    @torch.no_grad()
    def prepare_step(self, model, micro_batches: list[dict[str, torch.Tensor]], step: int) -> None:
        example_index = torch.cat([b["example_index"] for b in micro_batches])
        self.step_prompts = example_index.tolist()
        scored = self.sample_and_score(model, example_index, step, group_size=2)
        chosen, rejected = preference_order(self.label(scored))
        rows = scored.rows
        rows["ref_token_logps"] = self.reference.token_logps(model, rows, self.config.temperature)
        for batch, c, r in zip(micro_batches, chosen.tensor_split(len(micro_batches)),
                               rejected.tensor_split(len(micro_batches))):
            batch.clear()
            if len(c):  # chosen rows first, then their rejected rows, as DPO's batches
                batch.update({k: v[torch.cat([c, r]).to(v.device)] for k, v in rows.items()})
            elif fsdp.is_sharded(model):  # every rank runs every pass under FSDP: a pair that carries no loss,
                # scored without an attention mask (causal positions instead), so that no token of it is counted
                pair = {k: v[:2] for k, v in rows.items() if k != "attention_mask"}
                positions = torch.arange(pair["input_ids"].shape[1], device=pair["input_ids"].device)
                batch.update(pair, position_ids=positions.expand_as(pair["input_ids"]), placeholder=torch.ones(()))
        self.rollout_metrics = dict(rollout_metrics(scored), labelled_fraction=len(chosen) / len(self.step_prompts))
        self.train_started = time.perf_counter()

    def loss(self, model, batch: dict[str, torch.Tensor]) -> LossOutput:
        config = self.config
        stats, mask = token_logps(model, batch, temperature=config.temperature)  # (2B, T-1)
        lengths = mask.sum(-1).to(stats.logps.dtype)
        logps = masked_sum(stats.logps, mask, -1)  # (2B,) summed over each completion
        ref_logps = masked_sum(batch["ref_token_logps"], mask, -1)
        scores = (logps, ref_logps)
        if config.loss_type in LENGTH_NORMALISED_DPO:
            scores = (logps / lengths, ref_logps / lengths)
        (chosen, rejected), (ref_chosen, ref_rejected) = (s.chunk(2) for s in scores)
        out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta, config.loss_type)
        metrics = reward_metric_sums(out.chosen_rewards, out.rejected_rewards)
        chosen_logps, rejected_logps = logps.detach().chunk(2)
        metrics.update({"logps/chosen": float(chosen_logps.sum()), "logps/rejected": float(rejected_logps.sum()),
                        "length/chosen": float(lengths.chunk(2)[0].sum()),
                        "length/rejected": float(lengths.chunk(2)[1].sum())})
        if "placeholder" in batch:  # FSDP's pass on a rank without a labelled pair: zero gradient, nothing counted
            return LossOutput(out.losses.sum() * 0.0, dict.fromkeys(metrics, 0.0))
        return LossOutput(out.losses.sum(), metrics)

    def step_metrics(self) -> dict[str, float]:
        return dict(self.rollout_metrics, training_s=time.perf_counter() - self.train_started)


def train_online_dpo(config: OnlineDPOConfig, callbacks=None) -> dict:
    """Run online DPO end to end; returns the evaluation dict (also in output_dir/evaluation.json)."""
    model, tokenizer, setup = load_online_rl(config)
    # a judge naming the policy's own starting model judges with a frozen copy of it, loaded once
    judge = build_judge(config.judge, load_causal_lm) if config.judge is not None else None
    method = OnlineDPOMethod(config, tokenizer, setup, ReferencePolicy(model), judge)
    return train_online(config, model, tokenizer, method, callbacks)
