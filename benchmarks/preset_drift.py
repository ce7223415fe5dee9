"""How far this machine's preset runs drift from tests/invariants/presets_golden.json: every preset of the invariant
test, recorded again here, compared value by value. Prints per preset the largest gap relative to max(|recorded|,
1e-3), its absolute size and where, and whether every value that is not a float matched exactly (the test's
tolerance, docs/architecture.md, rests on these figures).

    python benchmarks/preset_drift.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "invariants"))
from presets import GOLDEN, PRESETS, record  # noqa: E402


def gaps(got, want, where: str, out: list) -> None:
    """(gap / max(|want|, 1e-3), gap, where) per float; (inf, 0, where) for any other value that differs."""
    if isinstance(want, dict):
        for key in want:
            gaps(got[key], want[key], f"{where}.{key}", out)
    elif isinstance(want, list):
        for index, (g, w) in enumerate(zip(got, want)):
            gaps(g, w, f"{where}[{index}]", out)
    elif isinstance(want, float) and isinstance(got, (int, float)):
        if not math.isnan(want):
            out.append((abs(got - want) / max(abs(want), 1e-3), abs(got - want), where))
    elif got != want:
        out.append((math.inf, 0.0, f"{where}: {got!r} != {want!r}"))


def main() -> None:
    golden = json.loads(GOLDEN.read_text())
    workdir = Path(tempfile.mkdtemp())
    reward = record("reward", workdir)
    print("| preset | largest gap / max(|recorded|, 1e-3) | its absolute gap | where | non-floats exact |")
    print("|---|---|---|---|---|")
    for name in PRESETS:
        got = reward if name == "reward" else record(name, workdir / name, reward_model=workdir / "reward" / "final")
        out: list = []
        gaps(got, golden[name], name, out)
        worst = max(out)
        exact = all(math.isfinite(g[0]) for g in out)
        print(f"| {name} | {worst[0]:.2e} | {worst[1]:.2e} | {worst[2]} | {exact} |", flush=True)


if __name__ == "__main__":
    main()
