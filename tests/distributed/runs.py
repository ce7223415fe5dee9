"""The runs the distributed tests compare, and the rank processes that run them.

Each scenario is a config for the tiny model whose global step batch is 2 x ``MICRO`` examples: one process with
``batch_size = 2 x MICRO``, or two processes (``world_rank``) with ``batch_size = MICRO`` each. ``run_ranks`` starts the
two ranks with ``torch.multiprocessing`` and the environment torchrun would give them (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so the code under test is the one ``torchrun -m posttrain train`` runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

import torch

MICRO = 2  # examples (prompts for GRPO) per rank and micro-batch
WORLD = 2
FAILURE = "bad reward data on rank 1: the answer column is missing"
FSDP = {"strategy": "fsdp"}
GRPO_MU2 = {"num_iterations": 2, "num_eval_prompts": 0}  # 2 updates per rollout: a checkpoint at step 1 is mid-cycle
FSDP_SCENARIOS = ("sft", "sft_lora", "dpo", "kto", "reward", "grpo", "reinforce", "ppo", "classify", "distill", "gkd",
                  "online_dpo")


def uneven(data_dir: Path) -> dict:
    """SFT whose ranks run different numbers of forward passes: 17 examples in step batches of 12 leave 5 (3 + 2
    examples: 3 and 2 micro-batches of grad_accum_steps 3), and 7 eval examples in batches of 3 (4 + 3: 2 and 1)."""
    return dict(max_steps=None, num_epochs=1, grad_accum_steps=3, eval_batch_size=3,
                data={"path": str(data_dir / "sft_17.jsonl"), "eval_path": str(data_dir / "sft_eval.jsonl"),
                      "max_length": 64})


def uneven_kto(data_dir: Path) -> dict:
    """KTO likewise: 17 unpaired examples leave a last step of 5 (3 + 2 examples: 3 and 2 micro-batches), whose z0
    passes (prepare_step) the short rank must match too; the reference a frozen copy (not sharded)."""
    return dict(max_steps=None, num_epochs=1, grad_accum_steps=3, eval_batch_size=3, precompute_ref_logps=False,
                data={"path": str(data_dir / "kto_17.jsonl"), "eval_path": str(data_dir / "kto_eval.jsonl"),
                      "max_length": 96})


def scenarios(data_dir: Path) -> dict[str, dict]:
    """name -> config (without output_dir and batch_size). Rows are written by ``write_data``."""
    common = {"model": "tiny", "progress_bar": False, "logging_steps": 1, "max_steps": 3, "seed": 3,
              "eval_on_start": False, "lr_schedule": "constant", "overwrite_output_dir": True}
    return {
        "sft": {**common, "method": "sft", "learning_rate": 1e-3, "grad_accum_steps": 2,
                "data": {"path": str(data_dir / "sft.jsonl"), "eval_path": str(data_dir / "sft_eval.jsonl"),
                         "max_length": 64}},
        # LoRA (dropout off: each rank would draw its own masks): only the adapters' gradients are summed
        "sft_lora": {**common, "method": "sft", "learning_rate": 1e-2, "lora": {"enabled": True, "r": 4, "alpha": 8,
                                                                                "dropout": 0.0},
                     "data": {"path": str(data_dir / "sft.jsonl"), "max_length": 64}},
        "dpo": {**common, "method": "dpo", "learning_rate": 1e-3, "beta": 0.5,
                "data": {"path": str(data_dir / "pairs.jsonl"), "max_length": 96}},
        # the reference log-probs precomputed: each rank scores half the data, then all of it is gathered
        "kto": {**common, "method": "kto", "learning_rate": 1e-3, "beta": 0.5, "precompute_ref_logps": True,
                "ref_cache_dir": "(per run)", "data": {"path": str(data_dir / "pairs.jsonl"), "max_length": 96}},
        # the reward model: a score head on the tiny decoder, Bradley-Terry on the pairs
        "reward": {**common, "method": "reward", "learning_rate": 1e-3,
                   "data": {"path": str(data_dir / "pairs.jsonl"), "max_length": 96}},
        # a completion stops at its first space, so the ranks decode different numbers of steps (under FSDP, gathering
        # weights per step would mismatch the ranks' collectives: tried); a greedy evaluation of 4 held-out prompts
        # after the last step (under FSDP: on the sharded model)
        "grpo": {**common, "method": "grpo", "learning_rate": 1e-3, "group_size": 4, "max_new_tokens": 6,
                 "scale_rewards": "batch", "num_train_prompts": 16, "num_eval_prompts": 4, "top_k": 20,
                 "stop_strings": [" "], "rewards": [{"function": "runs:starts_a_word"}]},
        # REINFORCE's moving-average baseline is the global batch's mean reward, the same on every rank
        "reinforce": {**common, "method": "reinforce", "learning_rate": 1e-3, "group_size": 2, "max_new_tokens": 6,
                      "num_train_prompts": 16, "num_eval_prompts": 0, "top_k": 20,
                      "rewards": [{"function": "runs:starts_a_word"}]},
        # PPO: the rollout is gathered, so whitening (rewards and advantages), the adaptive beta (changed after the
        # first rollout of 2 minibatch steps) and the minibatch permutation, which mixes ranks' rows, are global
        "ppo": {**common, "method": "ppo", "learning_rate": 1e-3, "max_new_tokens": 6, "num_train_prompts": 16,
                "num_eval_prompts": 0, "top_k": 20, "shared_value_head": True, "ppo_epochs": 1, "num_minibatches": 2,
                "whiten_rewards": True, "target_kl": 0.5, "rewards": [{"function": "runs:starts_a_word"}]},
        # a score head on the tiny decoder (mean pooling), its own evaluation after the last step on every rank. At lr
        # 1e-3 AdamW turns fp32 noise in the decoder's near-zero gradients (|g| << eps) into weights 9.9e-6 apart
        "classify": {**common, "method": "classify", "learning_rate": 3e-4,
                     "data": {"path": str(data_dir / "classify.jsonl"),
                              "eval_path": str(data_dir / "classify_eval.jsonl"), "max_length": 64}},
        # the student's loss multiplies by its head's weight directly; the teacher (another tiny model) stays whole
        "distill": {**common, "method": "distill", "model": "tiny", "teacher": str(data_dir / "teacher"),
                    "learning_rate": 1e-3, "data": {"path": str(data_dir / "sft.jsonl"),
                                                    "eval_path": str(data_dir / "sft_eval.jsonl"), "max_length": 64}},
        # every step on-policy: the student samples (stopping at a space: the ranks decode different numbers of steps)
        "gkd": {**common, "method": "gkd", "model": "tiny", "teacher": str(data_dir / "teacher"), "learning_rate": 1e-3,
                "lmbda": 1.0, "max_new_tokens": 6, "stop_strings": [" "],
                "data": {"path": str(data_dir / "sft.jsonl"), "max_length": 64}},
        # two completions per prompt, the higher reward chosen; a tie carries no loss
        "online_dpo": {**common, "method": "online_dpo", "learning_rate": 1e-3, "beta": 0.5, "max_new_tokens": 6,
                       "num_train_prompts": 16, "num_eval_prompts": 0, "top_k": 20,
                       "rewards": [{"function": "runs:starts_a_word"}]},
    }


def starts_a_word(prompts, completions, problems):
    """1 when the completion begins with a space: a reward a random tiny model earns sometimes."""
    return [float(text.startswith(" ")) for text in completions]


def fails_on_rank_1(prompts, completions, problems):
    """A reward function whose data is broken on rank 1 only."""
    if os.environ.get("RANK") == "1":
        raise ValueError(FAILURE)
    return starts_a_word(prompts, completions, problems)


def write_data(data_dir: Path) -> None:
    from posttrain.data.synthetic import arithmetic_preferences, arithmetic_sft
    from posttrain.models import build_tiny_model, load_tokenizer

    data_dir.mkdir(parents=True, exist_ok=True)
    sft, sft_eval = arithmetic_sft(n_train=24, n_eval=7, seed=5)
    pairs, _ = arithmetic_preferences(n_train=12, n_eval=1, seed=5)
    (data_dir / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (data_dir / "sft_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_eval))
    (data_dir / "sft_17.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft[:17]))
    (data_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    unpaired = [{"prompt": r["prompt"], "completion": r[key], "label": key == "chosen"}
                for r in pairs for key in ("chosen", "rejected")]
    (data_dir / "kto_17.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unpaired[:17]))
    (data_dir / "kto_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unpaired[17:]))
    for name, rows in (("classify", sft), ("classify_eval", sft_eval)):  # the prompt's operation is its label
        labelled = [{"text": r["prompt"], "label": "sum" if " + " in r["completion"] else "other"} for r in rows]
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    teacher = build_tiny_model(seed=1)  # distill's and GKD's teacher: peaked where the student is near uniform, so
    with torch.no_grad():  # that the divergence's gradients are not all fp32 rounding
        teacher.model.norm.weight.mul_(8.0)
    teacher.save_pretrained(data_dir / "teacher")
    load_tokenizer("tiny").save_pretrained(data_dir / "teacher")


def train(name: str, data_dir: Path, output_dir: Path, batch_size: int, **extra) -> None:
    from posttrain.api import train as run

    config = dict(scenarios(data_dir)[name], output_dir=str(output_dir), batch_size=batch_size, **extra)
    if "ref_cache_dir" in config:  # each run its own cache: the 1-process run scores the data itself
        config["ref_cache_dir"] = str(output_dir.parent / f"{output_dir.name}_ref_cache")
    run(config)


def results(output_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The logged training records and the final weights of a run (the model, or the LoRA adapter)."""
    from safetensors.torch import load_file

    records = [json.loads(line) for line in (output_dir / "log_history.jsonl").read_text().splitlines()]
    final = output_dir / "final"
    weights = final / ("adapter_model.safetensors" if (final / "adapter_model.safetensors").is_file()
                       else "model.safetensors")
    return [r for r in records if "loss" in r], load_file(weights)


def evaluations(output_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "log_history.jsonl").read_text().splitlines()]
    return [r for r in records if "eval_loss" in r]


# ------------------------------------------------------------------------------------------------- the ranks
def run_ranks(function, *args, timeout: float = 240) -> list[dict]:
    """Run ``function(*args)`` in WORLD processes as torchrun would start them; each rank's outcome:
    ``{"ok": True}`` or ``{"error": "<type>: <message>", "traceback": ...}``."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_rank_main, args=(WORLD, port, queue, function, args), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(max(deadline - time.monotonic(), 0.0)):  # a rank's exception comes through the queue
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the ranks did not finish within {timeout} s")
    outcomes = {}
    while not queue.empty():
        rank, outcome = queue.get()
        outcomes[rank] = outcome
    return [outcomes[r] for r in range(WORLD)]


def _rank_main(rank: int, world: int, port: int, queue, function, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TOKENIZERS_PARALLELISM="false",
                      HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    try:
        function(*args)
        queue.put((rank, {"ok": True}))
    except Exception as exc:  # reported to the test, which checks the message
        queue.put((rank, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}))


def all_scenarios(data_dir: Path, out: Path) -> None:
    """What each rank runs: every scenario, one after the other, in one process group; then a run that fails on
    rank 1, which ends both processes (one launch for all, to keep the tests short)."""
    for name in scenarios(data_dir):
        train(name, data_dir, out / f"{name}_2x{MICRO}", MICRO)
    # stopped after a checkpoint at step 2; test_data_parallel resumes it in one process
    train("sft", data_dir, out / f"sft_2x{MICRO}_to_step_2", MICRO, max_steps=2, save_steps=2)
    # FSDP: the same runs, compared with the same 1-process runs; a sharded checkpoint resumed in 1 process, and a
    # 1-process checkpoint (written before this launch) resumed under FSDP
    for name in FSDP_SCENARIOS:
        train(name, data_dir, out / f"{name}_fsdp_2x{MICRO}", MICRO, distributed=FSDP)
    train("sft", data_dir, out / f"sft_fsdp_2x{MICRO}_to_step_2", MICRO, max_steps=2, save_steps=2, distributed=FSDP)
    train("sft", data_dir, out / f"sft_fsdp_2x{MICRO}_from_1x{WORLD * MICRO}", MICRO, distributed=FSDP,
          resume_from=str(out / f"sft_1x{WORLD * MICRO}_to_step_2" / "checkpoints" / "step_2"))
    train("sft", data_dir, out / f"sft_fsdp_uneven_2x{MICRO}", MICRO, distributed=FSDP, **uneven(data_dir))
    train("kto", data_dir, out / f"kto_fsdp_uneven_2x{MICRO}", MICRO, distributed=FSDP, **uneven_kto(data_dir))
    # GRPO stopped in the middle of a rollout's updates: each rank's share of the rollout goes into the checkpoint
    train("grpo", data_dir, out / "grpo_mu2_fsdp", MICRO, distributed=FSDP, **GRPO_MU2)
    train("grpo", data_dir, out / "grpo_mu2_fsdp_to_step_1", MICRO, distributed=FSDP, max_steps=1, save_steps=1,
          **GRPO_MU2)
    train("grpo", data_dir, out / "grpo_mu2_fsdp_resumed", MICRO, distributed=FSDP, **GRPO_MU2,
          resume_from=str(out / "grpo_mu2_fsdp_to_step_1" / "checkpoints" / "step_1"))
    try:
        train("grpo", data_dir, out / "fails_on_rank_1", MICRO, rewards=[{"function": "runs:fails_on_rank_1"}])
    finally:  # when each rank stopped: rank 0 must not wait for the collective timeout (600 s)
        (out / f"stopped_rank_{os.environ['RANK']}").write_text(str(time.time()))
