"""Data-parallel training (posttrain.engine.distributed): 2 processes x micro-batch b take the same steps as 1 process
x 2b (per-step loss and final weights within 1e-5, fp32), and a rank that fails stops every rank with its message.

Two gloo processes on CPU, as ``torchrun --nproc_per_node 2`` starts them (tests/distributed/runs.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.engine import distributed
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model
from runs import (FAILURE, FSDP_SCENARIOS, GRPO_MU2, MICRO, WORLD, all_scenarios, evaluations, results, run_ranks,
                  scenarios, train, uneven, uneven_kto, write_data)

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Every scenario once in 2 processes (one launch for all of them, ending with a run that fails on rank 1), and
    once in 1 process with twice the micro-batch; the folder of the runs and each rank's outcome."""
    root = tmp_path_factory.mktemp("distributed")
    write_data(root / "data")
    # a 1-process checkpoint that the launch resumes under FSDP
    train("sft", root / "data", root / f"sft_1x{WORLD * MICRO}_to_step_2", WORLD * MICRO, max_steps=2, save_steps=2)
    train("sft", root / "data", root / f"sft_uneven_1x{WORLD * MICRO}", WORLD * MICRO, **uneven(root / "data"))
    train("kto", root / "data", root / f"kto_uneven_1x{WORLD * MICRO}", WORLD * MICRO, **uneven_kto(root / "data"))
    outcomes = run_ranks(all_scenarios, root / "data", root, timeout=1200)  # a hang would end here, and fail
    for name in scenarios(root / "data"):
        train(name, root / "data", root / f"{name}_1x{WORLD * MICRO}", WORLD * MICRO)
    return root, outcomes


@pytest.fixture(scope="module")
def two_process_runs(launch):
    root, outcomes = launch
    # every run before the last one completed: both ranks ended in the last one, with its error
    assert all(FAILURE in o.get("error", "") for o in outcomes), [o.get("traceback") for o in outcomes]
    return root


@pytest.mark.parametrize("name", ["sft", "sft_lora", "dpo", "kto", "reward", "grpo", "reinforce", "ppo", "classify",
                                  "distill", "gkd", "online_dpo"])
def test_two_processes_take_the_steps_of_one_with_twice_the_batch(two_process_runs, name):
    one_records, one_weights = results(two_process_runs / f"{name}_1x{WORLD * MICRO}")
    two_records, two_weights = results(two_process_runs / f"{name}_2x{MICRO}")
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == [1, 2, 3]
    for one, two in zip(one_records, two_records):
        assert math.isclose(two["loss"], one["loss"], rel_tol=1e-5, abs_tol=1e-6), (one["step"], one, two)
        assert two["num_tokens"] == one["num_tokens"]  # global tokens, not rank 0's
        if name in ("grpo", "reinforce", "ppo", "online_dpo"):  # the logged reward: the whole batch's mean, not
            assert math.isclose(two["reward"], one["reward"], abs_tol=1e-6)  # rank 0's
        if name in ("gkd", "online_dpo"):  # each rank samples its prompts' own streams: one process's completions
            assert math.isclose(two["completion_length"], one["completion_length"], rel_tol=1e-9)
    for key, weight in one_weights.items():  # atol: Adam's g / sqrt(v) magnifies summation-order differences where a
        # gradient is near zero (docs/distributed.md, "What the tests prove")
        torch.testing.assert_close(two_weights[key], weight, rtol=1e-5, atol=5e-5,
                                   msg=lambda detail, key=key: f"{name}: {key}: {detail}")
    if name == "sft_lora":  # LoRA's B starts at zero: it moved if it is not zero any more
        moved = [weight for key, weight in one_weights.items() if "lora_B" in key]
    else:
        initial = build_tiny_model().state_dict()  # what both runs started from ("model: tiny")
        moved = [weight - initial[key] for key, weight in one_weights.items() if key in initial]  # reward: + score
    assert max(float(weight.abs().max()) for weight in moved) > 1e-4  # the runs did train


def test_ppo_rollout_figures_and_adaptive_beta_are_the_global_ones(two_process_runs):
    """ppo_metrics.jsonl (rank 0 only): one line per rollout, each figure (whitened advantages, KL, the adapted beta,
    the value head's explained variance, the update means) the 1-process run's; the critic trained alike."""
    from safetensors.torch import load_file

    one, two = ([json.loads(line) for line in (two_process_runs / f"ppo_{n}" / "ppo_metrics.jsonl").read_text()
                 .splitlines()] for n in (f"1x{WORLD * MICRO}", f"2x{MICRO}"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == [2]
    for name in ("reward", "reward_std", "score", "kl", "kl_coef", "advantage_mean", "advantage_std", "value_mean",
                 "return_mean", "explained_variance", "completion_length", "completion_length_max", "policy_loss",
                 "value_loss", "approx_kl", "clip_fraction"):
        assert math.isclose(two[0][name], one[0][name], rel_tol=1e-5, abs_tol=1e-6), (name, one[0], two[0])
    one_records, two_records = (results(two_process_runs / f"ppo_{n}")[0] for n in (f"1x{WORLD * MICRO}", f"2x{MICRO}"))
    assert two_records[2]["kl_coef"] == one_records[2]["kl_coef"] != one_records[0]["kl_coef"]  # adapted after step 2
    one_head, two_head = (load_file(two_process_runs / f"ppo_{n}" / "final" / "value_head.safetensors")
                          for n in (f"1x{WORLD * MICRO}", f"2x{MICRO}"))
    for key, weight in one_head.items():
        torch.testing.assert_close(two_head[key], weight, rtol=1e-5, atol=1e-5)
    assert float(one_head["weight"].abs().max()) > 0  # the head (zero at start) trained


def test_reference_log_probs_split_over_ranks_fill_the_same_cache(two_process_runs):
    from safetensors.torch import load_file

    one, two = (next((two_process_runs / f"kto_{n}_ref_cache").rglob("logps.safetensors"))
                for n in (f"1x{WORLD * MICRO}", f"2x{MICRO}"))
    assert one.parent.name == two.parent.name  # the same key: same model, data and settings
    one, two = load_file(one), load_file(two)
    assert torch.equal(two["offsets"], one["offsets"])
    torch.testing.assert_close(two["values"], one["values"], rtol=0, atol=1e-5)


def test_evaluation_is_split_over_ranks_and_summed(two_process_runs):
    one, two = (evaluations(two_process_runs / f"sft_{n}") for n in (f"1x{WORLD * MICRO}", f"2x{MICRO}"))
    assert len(one) == len(two) == 1 and two[0]["eval_items"] == one[0]["eval_items"]  # 7 examples: 4 + 3
    assert math.isclose(two[0]["eval_loss"], one[0]["eval_loss"], rel_tol=1e-5)
    assert math.isclose(two[0]["eval_token_accuracy"], one[0]["eval_token_accuracy"], rel_tol=1e-5)


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_runs, tmp_path):
    checkpoint = two_process_runs / f"sft_2x{MICRO}_to_step_2" / "checkpoints" / "step_2"
    train("sft", two_process_runs / "data", tmp_path / "resumed", WORLD * MICRO, resume_from=str(checkpoint))
    resumed_records, resumed_weights = results(tmp_path / "resumed")
    records, weights = results(two_process_runs / f"sft_1x{WORLD * MICRO}")
    assert [r["step"] for r in resumed_records] == [3]  # the same data position: step 3 of the uninterrupted run
    assert math.isclose(resumed_records[0]["loss"], records[2]["loss"], rel_tol=1e-5)
    for key, weight in weights.items():
        torch.testing.assert_close(resumed_weights[key], weight, rtol=1e-5, atol=1e-5, msg=key)


# ------------------------------------------------------------------------------------------ FSDP (strategy: fsdp)
@pytest.mark.parametrize("name", FSDP_SCENARIOS)
def test_fsdp_takes_the_steps_of_one_process_with_twice_the_batch(two_process_runs, name):
    one_records, one_weights = results(two_process_runs / f"{name}_1x{WORLD * MICRO}")
    two_records, two_weights = results(two_process_runs / f"{name}_fsdp_2x{MICRO}")  # final/: consolidated
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == [1, 2, 3]
    # PPO's step 3 is the first update on a new rollout, sampled after 2 updates: its policy loss is a mean of
    # advantages whitened by a std of 0.08, which turns the runs' fp32 rounding (weights within 5e-7) into 3e-5 of
    # the loss (DDP's run: 1.4e-5, within its abs_tol)
    rel_tol = 1e-4 if name == "ppo" else 1e-5
    for one, two in zip(one_records, two_records):
        assert math.isclose(two["loss"], one["loss"], rel_tol=rel_tol, abs_tol=1e-6), (one["step"], one, two)
        assert two["num_tokens"] == one["num_tokens"]
        # the norms differ in the 6th digit: one process sums 3.2M squares in fp32, FSDP per shard (closer to fp64);
        # in the 5th for distillation, whose head gradient is dense over the vocabulary: one process's fp32 norm of
        # a distill step's gradient is 5.6e-5 below its fp64 norm (1.285986, 1.286058), GKD's runs differ by 2e-4
        assert math.isclose(two["grad_norm"], one["grad_norm"], rel_tol=3e-4 if name in ("distill", "gkd") else 1e-4)
        if name in ("grpo", "reinforce", "online_dpo"):  # rollouts sampled on the gathered weights: the same
            assert math.isclose(two["reward"], one["reward"], abs_tol=1e-6)  # completions
        if name in ("grpo", "reinforce", "online_dpo", "gkd"):
            assert math.isclose(two["completion_length"], one["completion_length"], rel_tol=1e-9)
    assert sorted(two_weights) == sorted(one_weights)  # sft_lora: the adapter only, as in one process
    for key, weight in one_weights.items():  # atol: Adam's g / sqrt(v) magnifies summation-order differences where a
        # gradient is near zero (docs/distributed.md, "What the tests prove")
        torch.testing.assert_close(two_weights[key], weight, rtol=1e-5, atol=5e-5,
                                   msg=lambda detail, key=key: f"{name}: {key}: {detail}")
    if name == "online_dpo":  # a step with one labelled pair of 4: the other rank ran a pair that carries no loss
        assert 0.25 in [r["labelled_fraction"] for r in one_records]
    if name in ("classify", "distill"):  # the evaluation after step 3, on the sharded model (classify's: its own)
        one_eval, two_eval = (evaluations(two_process_runs / n) for n in (f"{name}_1x{WORLD * MICRO}",
                                                                          f"{name}_fsdp_2x{MICRO}"))
        assert [r["step"] for r in two_eval] == [r["step"] for r in one_eval] == [3]
        assert sorted(two_eval[0]) == sorted(one_eval[0])
        for key, value in one_eval[0].items():
            assert math.isclose(two_eval[0][key], value, rel_tol=1e-5, abs_tol=1e-7), (key, one_eval, two_eval)
    if name == "grpo":  # the greedy evaluation after step 3, on the sharded model: the same answers
        one_eval, two_eval = (_greedy_evaluations(two_process_runs / n) for n in (f"grpo_1x{WORLD * MICRO}",
                                                                                  f"grpo_fsdp_2x{MICRO}"))
        assert [r["step"] for r in two_eval] == [r["step"] for r in one_eval] == [3]
        for key in ("eval_reward", "eval_completion_length", "eval_items"):
            assert math.isclose(two_eval[0][key], one_eval[0][key], abs_tol=1e-6), (key, one_eval, two_eval)


def _greedy_evaluations(output_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "log_history.jsonl").read_text().splitlines()]
    return [r for r in records if "eval_reward" in r]


def test_fsdp_final_folder_is_a_plain_model_transformers_loads(two_process_runs):
    from transformers import AutoModelForCausalLM

    final = two_process_runs / f"sft_fsdp_2x{MICRO}" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    _, weights = results(two_process_runs / f"sft_fsdp_2x{MICRO}")
    for key, value in model.state_dict().items():  # full tensors, not one rank's shards
        torch.testing.assert_close(value, weights.get(key, weights["model.embed_tokens.weight"]), rtol=0, atol=0)


def test_fsdp_ranks_with_fewer_passes_run_extra_ones(two_process_runs):
    # each pass gathers weights: without the extra passes the ranks' collectives mismatch and the launch fails
    one_records, one_weights = results(two_process_runs / f"sft_uneven_1x{WORLD * MICRO}")
    two_records, two_weights = results(two_process_runs / f"sft_fsdp_uneven_2x{MICRO}")
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == [1, 2]
    for one, two in zip(one_records, two_records):
        assert math.isclose(two["loss"], one["loss"], rel_tol=1e-5)
    for key, weight in one_weights.items():
        torch.testing.assert_close(two_weights[key], weight, rtol=1e-5, atol=1e-5, msg=key)
    one_eval, two_eval = (evaluations(two_process_runs / n) for n in (f"sft_uneven_1x{WORLD * MICRO}",
                                                                      f"sft_fsdp_uneven_2x{MICRO}"))
    assert two_eval[-1]["eval_items"] == one_eval[-1]["eval_items"]  # the extra passes are not counted
    assert math.isclose(two_eval[-1]["eval_loss"], one_eval[-1]["eval_loss"], rel_tol=1e-5)


def test_fsdp_kto_ranks_with_fewer_micro_batches_score_extra_ones(two_process_runs):
    # KTO's z0 passes (prepare_step) gather weights too: the short rank scores its last micro-batch again, unused
    one_records, one_weights = results(two_process_runs / f"kto_uneven_1x{WORLD * MICRO}")
    two_records, two_weights = results(two_process_runs / f"kto_fsdp_uneven_2x{MICRO}")
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == [1, 2]
    for one, two in zip(one_records, two_records):
        assert math.isclose(two["loss"], one["loss"], rel_tol=1e-5), (one, two)
        assert math.isclose(two["kl"], one["kl"], rel_tol=1e-5, abs_tol=1e-7)  # z0 of the whole step, not extra
    for key, weight in one_weights.items():
        torch.testing.assert_close(two_weights[key], weight, rtol=1e-5, atol=1e-5, msg=key)
    # the eval batches (4 and 3 examples in batches of 3: 2 and 1) ran too; their z0 is per batch, so the eval loss
    # is not the single process's (as under ddp)
    assert evaluations(two_process_runs / f"kto_fsdp_uneven_2x{MICRO}")[-1]["eval_items"] == 7


def test_a_sharded_checkpoint_resumes_in_one_process(two_process_runs, tmp_path):
    run = two_process_runs / f"sft_fsdp_2x{MICRO}_to_step_2"
    checkpoint = run / "checkpoints" / "step_2"
    assert (checkpoint / "sharded" / ".metadata").is_file() and not (checkpoint / "model.safetensors").exists()
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no staging left
    train("sft", two_process_runs / "data", tmp_path / "resumed", WORLD * MICRO, resume_from=str(checkpoint))
    _assert_continues_the_one_process_run(two_process_runs, tmp_path / "resumed")


def test_a_run_resumed_in_the_middle_of_a_rollouts_updates_trains_on_each_ranks_share(two_process_runs, tmp_path):
    # GRPO with num_iterations 2, checkpoint at step 1: step 2 reuses step 1's rollout, whose rows differ per rank.
    # Saving only rank 0's share (as before) gave both ranks rank 0's rows: step 2's loss -0.078 instead of -0.124
    records, weights = results(two_process_runs / "grpo_mu2_fsdp")
    resumed_records, resumed_weights = results(two_process_runs / "grpo_mu2_fsdp_resumed")
    assert [r["step"] for r in resumed_records] == [2, 3]
    for full, resumed in zip(records[1:], resumed_records):
        assert math.isclose(resumed["loss"], full["loss"], rel_tol=1e-6, abs_tol=1e-7), (full, resumed)
        assert resumed["reward"] == full["reward"]
    for key, weight in weights.items():
        torch.testing.assert_close(resumed_weights[key], weight, rtol=1e-6, atol=1e-6, msg=key)
    checkpoint = two_process_runs / "grpo_mu2_fsdp_to_step_1" / "checkpoints" / "step_1"
    with pytest.raises(ConfigError, match="written by 2 process.*resume it with 2 process"):  # shares per rank
        train("grpo", two_process_runs / "data", tmp_path / "one", WORLD * MICRO, resume_from=str(checkpoint),
              **GRPO_MU2)


def test_a_one_process_checkpoint_resumes_under_fsdp(two_process_runs):
    _assert_continues_the_one_process_run(two_process_runs, two_process_runs / f"sft_fsdp_2x{MICRO}_from_1x{WORLD * MICRO}")


def _assert_continues_the_one_process_run(root, resumed):
    resumed_records, resumed_weights = results(resumed)
    records, weights = results(root / f"sft_1x{WORLD * MICRO}")
    assert [r["step"] for r in resumed_records] == [3]  # the same data position: step 3 of the uninterrupted run
    assert math.isclose(resumed_records[0]["loss"], records[2]["loss"], rel_tol=1e-5)
    for key, weight in weights.items():
        torch.testing.assert_close(resumed_weights[key], weight, rtol=1e-5, atol=1e-5, msg=key)


def test_rank_shares_are_disjoint_and_cover_the_step_batch(monkeypatch):
    lengths = [5, 3, 9, 1, 7, 2, 8]
    indices = [6, 0, 3, 5, 1]
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shares.append(distributed.rank_share(indices, lengths))
    # laid end to end, the shares are the step batch in the length order one process splits it in
    assert sum(shares, []) == sorted(indices, key=lambda i: lengths[i])
    assert [len(s) for s in shares] == [2, 2, 1]


def test_a_failing_rank_stops_every_rank_with_its_message(launch):
    root, outcomes = launch  # the launch's last run: a reward function that raises on rank 1 only
    stopped = [float((root / f"stopped_rank_{rank}").read_text()) for rank in range(WORLD)]
    assert abs(stopped[0] - stopped[1]) < 30  # rank 0 noticed at once, not after distributed.timeout_s (600 s)
    assert outcomes[1]["error"] == f"ValueError: {FAILURE}"
    # rank 0 did not hang in the collective it was waiting in: it stopped with rank 1's message, naming rank 1
    assert outcomes[0]["error"].startswith(f"CollectiveError: rank 1 failed: ValueError: {FAILURE} (rank 0 stopped in ")


def test_nproc_runs_torchrun_with_the_same_arguments(tmp_path):
    write_data(tmp_path / "data")
    config = tmp_path / "config.json"
    import json

    config.write_text(json.dumps(dict(scenarios(tmp_path / "data")["sft"], output_dir=str(tmp_path / "run"),
                                      batch_size=MICRO)))
    done = subprocess.run([sys.executable, "-m", "posttrain", "train", str(config), "max_steps=2", "--nproc", "2"],
                          capture_output=True, text=True, timeout=240, cwd=HERE,
                          env={**_clean_env(), "PYTHONPATH": str(HERE)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes x batch_size 2 x grad_accum_steps 2 = 8 examples per optimizer step" in done.stderr
    records, _ = results(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]  # max_steps=2 reached both ranks; one log, written once


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
