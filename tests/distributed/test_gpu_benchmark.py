"""benchmarks/gpu/throughput.py: its arguments, its arithmetic, and its clean exit without a GPU (no training)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "throughput.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_parse_and_bad_ones_are_refused(tmp_path, capsys):
    bench = load()
    args = bench.parse_args(["--steps", "5", "--methods", "sft", "--peak-tflops", "100", "--out", str(tmp_path / "x")])
    assert (args.steps, args.methods, args.peak_tflops, args.out) == (5, ["sft"], 100.0, tmp_path / "x")
    assert bench.parse_args([]).methods == ["grpo", "sft"]
    for bad in (["--steps", "1"], ["--methods", "ppo"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    assert "--steps must be at least 2" in capsys.readouterr().err


def test_peak_flops_table_and_override():
    bench = load()
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("NVIDIA H200") == 989e12
    assert bench.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench.peak_flops("NVIDIA L4") == 121e12
    assert bench.peak_flops("NVIDIA L40S") == 362e12  # not L4's entry
    assert bench.peak_flops("NVIDIA GeForce RTX 4090") is None
    assert bench.peak_flops("NVIDIA GeForce RTX 4090", peak_tflops=165.2) == 165.2e12


def test_mfu_on_hand_computed_numbers():
    bench = load()
    # 6 x 134,515,008 params x 50,000 tok/s = 4.03545024e13 FLOP/s; one H100 (989e12): 0.0408033...
    assert bench.mfu(134_515_008, 50_000.0, 1, 989e12) == pytest.approx(4.03545024e13 / 989e12, rel=1e-12)
    assert bench.mfu(134_515_008, 50_000.0, 1, 989e12) == pytest.approx(0.04080334, rel=1e-6)
    # 8 A100s at 1e6 tok/s of a 1e9-param model: 6e15 / (8 x 312e12) = 2.4038...
    assert bench.mfu(10**9, 1e6, 8, 312e12) == pytest.approx(6e15 / 2.496e15, rel=1e-12)
    assert bench.mfu(10**9, 1e6, 8, None) is None  # unknown GPU, no --peak-tflops


def test_one_gpu_runs_each_method_once_several_add_ddp_and_fsdp_for_sft():
    bench = load()
    assert bench.plan(["grpo", "sft"], 1) == [("grpo", 1, "single"), ("sft", 1, "single")]
    assert bench.plan(["grpo", "sft"], 4) == [("grpo", 1, "single"), ("sft", 1, "single"), ("grpo", 4, "ddp"),
                                              ("sft", 4, "ddp"), ("sft", 4, "fsdp")]  # FSDP refuses GRPO


def test_parameter_count_reads_the_saved_tensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model.safetensors"))
    assert load().count_parameters(tmp_path) == 17


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU exit path")
def test_without_cuda_it_says_so_and_exits_zero(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    message = "benchmarks/gpu/throughput.py needs a CUDA GPU; none here, nothing run."
    assert done.stdout.strip().splitlines() == [message]
    assert not out.exists()
