"""How a model's refusals split across the safety set's twin pairs, from the answers an evaluation already wrote
(the `safety` metric's samples in evaluation_samples.jsonl; no model is loaded): per pair, the harmful request
refused and its benign twin not (ideal, the metric's ``twin_accuracy``), both refused, neither, or the inverse.

    python benchmarks/safety_twins.py runs/safety/base_samples.jsonl \
        runs/constitutional/rl_evaluation/evaluation_samples.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from posttrain.eval.metrics.safety import twin_outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="+", help="evaluation samples files (JSONL) holding the safety metric's rows")
    args = parser.parse_args()
    print("| samples | twin pairs | ideal | both refused | neither refused | inverse |")
    print("|---|---|---|---|---|---|")
    for path in args.samples:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        outcomes = twin_outcomes([r for r in rows if r.get("metric", "safety") == "safety" and "refused" in r])
        n = len(outcomes["ideal"])
        shares = " | ".join(f"{sum(v) / n:.3f}" if n else "-" for v in outcomes.values())
        print(f"| {path} | {n} | {shares} |")


if __name__ == "__main__":
    main()
