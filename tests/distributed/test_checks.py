"""What the engine refuses before a multi-process run starts, and the torchrun command ``--nproc`` runs (in one
process: ``world_size`` is patched to 2)."""

from __future__ import annotations

import sys

import pytest

from conftest import random_examples
from posttrain.engine import Engine, EngineConfig, distributed
from posttrain.errors import ConfigError
from posttrain.trainers.ppo import PPOMethod
from posttrain.trainers.sft import SFTMethod


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)


def engine(tiny_model, method, n_examples: int, **config):
    return Engine(EngineConfig(output_dir="unused", batch_size=2, **config), tiny_model, method,
                  random_examples(n_examples), None, pad_token_id=0, save_model=lambda directory: None)


def test_the_global_step_batch_counts_every_process(tiny_model, two_processes):
    assert engine(tiny_model, SFTMethod(), 16, grad_accum_steps=2).step_size == 8  # 2 x 2 x 2 processes


def test_a_step_batch_that_leaves_a_process_without_examples_is_refused(tiny_model, two_processes):
    with pytest.raises(ConfigError, match="holds 1 of the 9 examples, fewer than the 2 processes"):
        engine(tiny_model, SFTMethod(), 9)
    engine(tiny_model, SFTMethod(), 10)  # 2 left over: one per process


def test_a_method_that_is_not_data_parallel_is_refused(tiny_model, two_processes):
    class OneProcessOnly(SFTMethod):
        data_parallel = False

    assert PPOMethod.data_parallel  # every built-in method runs data-parallel (PPO since its rollout is gathered)
    with pytest.raises(ConfigError, match="OneProcessOnly does not run in several processes yet"):
        engine(tiny_model, OneProcessOnly(), 8)


def test_optimizer_in_backward_is_refused(tiny_model, two_processes):
    with pytest.raises(ConfigError, match="before its gradient is summed over the 2 processes"):
        engine(tiny_model, SFTMethod(), 8, optimizer_in_backward=True, max_grad_norm=0)


def test_fsdp_refuses_what_it_does_not_run_yet(tiny_model, two_processes):
    from posttrain.engine.config import DistributedConfig

    from posttrain.trainers import ClassifyMethod, DistillMethod, GKDMethod, OnlineDPOMethod

    class Untested(SFTMethod):
        fsdp = False

    fsdp = {"distributed": DistributedConfig(strategy="fsdp")}
    assert all(m.fsdp for m in (SFTMethod, PPOMethod, OnlineDPOMethod, ClassifyMethod, DistillMethod, GKDMethod))
    with pytest.raises(ConfigError, match="Untested is not tested under FSDP yet"):
        engine(tiny_model, Untested(), 8, **fsdp)
    with pytest.raises(ConfigError, match="save_best=false"):
        engine(tiny_model, SFTMethod(), 8, save_best=True, **fsdp)
    engine(tiny_model, SFTMethod(), 8, **fsdp)  # accepted: sharding happens when training starts


def test_nproc_command_is_torchrun_standalone_with_the_same_arguments(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    command = distributed.torchrun_command(4, ["train", "c.yaml", "max_steps=3"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                       "-m", "posttrain", "train", "c.yaml", "max_steps=3"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="inside a torchrun launch"):
        distributed.torchrun_command(2, ["train", "c.yaml"])
