"""Every preset on a CUDA device (skipped without one): each runs end to end with the engine's defaults there (bf16
autocast under precision=auto, a bf16 LoRA base), and in fp32 the methods without sampling log what they log on the
CPU (presets_golden.json) up to the GPU kernels' rounding."""

import json
import math

import pytest
import torch

from presets import GOLDEN, PRESETS, record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GOLDEN_RESULTS = json.loads(GOLDEN.read_text())
WITHOUT_SAMPLING = ["sft", "sft_lora", "sft_low_memory", "dpo_lora", "simpo", "orpo", "kto", "reward"]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reward_for_ppo")
    record("reward", workdir, extra={"device": "cuda"})
    return workdir / "reward" / "final"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_on_cuda_with_the_default_precision(name, tmp_path, reward_model_dir):
    got = record(name, tmp_path, reward_model=reward_model_dir if name == "ppo" else None, extra={"device": "cuda"})
    losses = [r["loss"] for r in got["log_history"] if "loss" in r]
    steps = [r["step"] for r in GOLDEN_RESULTS[name]["log_history"] if "loss" in r]
    assert len(losses) == len(steps) and all(math.isfinite(x) for x in losses), losses
    assert any(name.startswith("eval_") for name in got["log_history"][-1])


@pytest.mark.parametrize("name", WITHOUT_SAMPLING)
def test_fp32_on_cuda_logs_what_the_cpu_logs(name, tmp_path):
    got = record(name, tmp_path, extra={"device": "cuda", "precision": "fp32", "dtype": "float32"})
    want = GOLDEN_RESULTS[name]["log_history"]
    assert [r["step"] for r in got["log_history"]] == [r["step"] for r in want]
    for g, w in zip(got["log_history"], want):
        for key in ("loss", "eval_loss"):
            if key in w:
                assert g[key] == pytest.approx(w[key], rel=2e-3, abs=1e-5), (g["step"], key)
