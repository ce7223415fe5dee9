"""The proof that a refactor is a refactor: every preset, shrunk to the tiny model, logs the same numbers and ends
with the same weights as when presets_golden.json was recorded (tests/invariants/presets.py says how)."""

import json
import math
import os

import pytest

from presets import GOLDEN, PRESETS, record

GOLDEN_RESULTS = json.loads(GOLDEN.read_text())
# bit-identical on the machine that recorded them (POSTTRAIN_EXACT=1 checks that); another CPU's matmul kernels move
# the floats a little (docs/architecture.md), so elsewhere a float may differ by 1e-3 of itself or 1e-6, while every
# value that is not a float (sampled token ids, counts, keys, shapes) must still match exactly
EXACT = os.environ.get("POSTTRAIN_EXACT") == "1"
RELATIVE_TOLERANCE, ABSOLUTE_TOLERANCE = (0.0, 0.0) if EXACT else (1e-3, 1e-6)


def assert_same(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert sorted(got) == sorted(want), f"{where}: keys differ: {sorted(set(got) ^ set(want))}"
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {len(got)} entries, recorded {len(want)}"
        for index, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{index}]")
    elif isinstance(want, float) and isinstance(got, (int, float)):
        assert math.isclose(got, want, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE) or \
            (math.isnan(got) and math.isnan(want)), \
            f"{where}: {got!r} != recorded {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != recorded {want!r}"


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reward_for_ppo")
    return workdir, record("reward", workdir)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_logs_and_weights_unchanged(name, tmp_path, reward_model_dir):
    workdir, reward_result = reward_model_dir
    got = reward_result if name == "reward" else record(name, tmp_path, reward_model=workdir / "reward" / "final")
    assert_same(got, GOLDEN_RESULTS[name], name)
