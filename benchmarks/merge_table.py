"""Evidence for issue 25: merge a DPO-trained model (short answers) with a GRPO-trained model (accurate answers) by
every merge rule and a sweep of weights, evaluate the inputs and each merge on configs/eval_merge.yaml (held-out
arithmetic accuracy, reply length on the DPO data's prompts, perplexity of held-out references), print one table.
Run from the repository root once both runs exist:

    .venv/bin/python benchmarks/merge_table.py --dpo runs/dpo/final --grpo runs/grpo/final [--out runs/merge_table]

Evaluations are cached as <out>/<name>.json, so an interrupted run picks up where it stopped.
"""

import argparse
import json
import time
from pathlib import Path

from posttrain.api import evaluate, merge



def merges(base: str, dpo: str, grpo: str) -> dict[str, dict]:
    """name -> merge config. Weights are (DPO, GRPO)."""
    def config(method, w_dpo, w_grpo, **parameters):
        return {"method": method, "base": base, "parameters": parameters,
                "models": [{"model": dpo, "weight": w_dpo}, {"model": grpo, "weight": w_grpo}]}

    table = {f"linear w_grpo={w}": config("linear", 1 - w, w) for w in (0.25, 0.5, 0.75)}
    table["task_arithmetic 1+1"] = config("task_arithmetic", 1.0, 1.0, scale=1.0)
    table["ties 1+1 density=0.5"] = config("ties", 1.0, 1.0, density=0.5, scale=1.0)
    table["dare_ties 1+1 p=0.5"] = config("ties", 1.0, 1.0, density=1.0, drop_rate=0.5, scale=1.0, seed=0)
    table["slerp t=0.5"] = {**config("slerp", 1.0, 1.0, t=0.5), "base": None}
    return table


def row(name: str, result: dict, seconds: float) -> str:
    metrics = result["metrics"]
    acc = metrics["arithmetic/accuracy"]
    words = metrics["length/words_mean"]
    ppl = metrics["perplexity"]
    return (f"| {name} | {acc['value']:.3f} ± {acc['stderr']:.3f} | {words['value']:.1f} | "
            f"{ppl['value']:.3f} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dpo", required=True)
    parser.add_argument("--grpo", required=True)
    parser.add_argument("--base", default="smollm2-135m-instruct", help="the model both were trained from")
    parser.add_argument("--out", default="runs/merge_table")
    parser.add_argument("--suite", default="configs/eval_merge.yaml")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    models = {"base": args.base, "DPO": args.dpo, "GRPO": args.grpo}
    configs = merges(args.base, args.dpo, args.grpo)
    print("| model | held-out accuracy | words per reply | perplexity | merge + eval s |\n|---|---|---|---|---|",
          flush=True)
    for name in list(models) + list(configs):
        slug = name.replace(" ", "_").replace("=", "").replace("+", "p").replace("(", "").replace(")", "")
        cached = root / f"{slug}.json"
        start = time.perf_counter()
        if not cached.exists():
            model = models.get(name)
            if model is None:
                config = {k: v for k, v in configs[name].items() if v is not None}
                model = str(merge({**config, "out": str(root / "models" / slug)}))
            result = evaluate(model, suite=args.suite, seed=0, out=root / f"{slug}.tmp.json")
            result["wall_s"] = time.perf_counter() - start
            (root / f"{slug}.tmp.json").write_text(json.dumps(result))
            (root / f"{slug}.tmp.json").replace(cached)
        result = json.loads(cached.read_text())
        print(row(name, result, result.get("wall_s", 0.0)), flush=True)


if __name__ == "__main__":
    main()
