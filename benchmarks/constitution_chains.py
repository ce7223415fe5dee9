"""What the critiques and the selection add in SL-CAI: the constitution's checkers read every stage of the chains an
SL-CAI run wrote (``posttrain constitution``, or a pipeline's revisions stage: chains.jsonl). No model is loaded.

Per checked principle, the share of prompts whose answer it accepts at each stage: the first response, the first
revision (critique and revision, no selection), the kept revision under each selection rule (the drawn principle's
checker alone, every principle's checker), and any of the m revisions (the most selection could reach). With
--by-kind (the safety set), harmful and benign prompts are counted apart, so ``harmless`` on the harmful half is the
refusal rate and ``not_evasive`` on the benign half the share not refused.

    python benchmarks/constitution_chains.py runs/constitutional/revisions/chains.jsonl \
        --constitution configs/constitutions/safety.yaml --by-kind
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from posttrain.data.safety import kind_of
from posttrain.rollout.constitution import load_constitution
from posttrain.rollout.critique_revise import select_revision


def stage_texts(chain: dict, principles: list, drawn) -> dict[str, list[str]]:
    """The answers of one chain's last round at each stage (lists: "any" holds all m revisions)."""
    step = chain["steps"][-1]
    revisions = step["revisions"]
    return {"response": [chain["response"]], "first revision": [revisions[0]],
            "kept: principle": [revisions[select_revision([drawn[step["principle"]]], chain["prompt"], revisions)]],
            "kept: constitution": [revisions[select_revision(principles, chain["prompt"], revisions)]],
            "any revision": revisions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chains", help="an SL-CAI run's chains.jsonl")
    parser.add_argument("--constitution", required=True, help="the constitution the run used")
    parser.add_argument("--by-kind", action="store_true", help="count the safety set's harmful and benign apart")
    args = parser.parse_args()
    constitution = load_constitution(args.constitution)
    principles = list(constitution.principles)
    drawn = {p.name: p for p in principles}
    chains = [json.loads(line) for line in Path(args.chains).read_text().splitlines() if line.strip()]
    groups = {"all": chains}
    if args.by_kind:
        groups = {kind: [c for c in chains if kind_of(c["prompt"]) == kind] for kind in ("harmful", "benign")}
    stages = list(stage_texts(chains[0], principles, drawn))
    print(f"{args.chains}: {len(chains)} chains")
    print("| prompts | principle | " + " | ".join(stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for group, rows in groups.items():
        texts = [stage_texts(c, principles, drawn) for c in rows]
        for principle in constitution.checked:
            shares = []
            for stage in stages:
                ok = [any(principle.complies(c["prompt"], t) for t in s[stage]) for c, s in zip(rows, texts)]
                shares.append(f"{sum(ok) / len(ok):.3f}")
            print(f"| {group} ({len(rows)}) | {principle.name} | " + " | ".join(shares) + " |")


if __name__ == "__main__":
    main()
