"""Evidence for sparse upcycling (docs/results.md): SFT (configs/sft.yaml) of a dense model and of its 4-expert top-2
upcycle with router_aux_loss_coef 0 / 0.01 / 0.1, at equal steps; prints held-out loss, token accuracy, balance loss,
expert utilisation and training tokens/s. Run from the repository root:
    .venv/bin/python benchmarks/moe_upcycle_sft.py [OUT_DIR]              a random tiny llama, 60 steps at lr 1e-3
    .venv/bin/python benchmarks/moe_upcycle_sft.py runs/moe_upcycle_embedded --model smollm2-135m-instruct \
        --steps 30 --learning-rate 5e-5 --coefs 0 0.01                   the embedded model
"""

import argparse
import json
import statistics
from pathlib import Path

from posttrain.api import train, upcycle
from posttrain.models import build_tiny_model
from posttrain.models.loading import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/moe_upcycle_tiny")
    parser.add_argument("--model", default="tiny", help="tiny (random, built here) or a model spec")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--learning-rate", default="1e-3")
    parser.add_argument("--coefs", nargs="+", default=["0", "0.01", "0.1"], help="router_aux_loss_coef values")
    args = parser.parse_args()
    root = Path(args.out)
    dense = str(root / "dense") if args.model == "tiny" else args.model
    if args.model == "tiny":
        build_tiny_model(0).save_pretrained(dense)
        load_tokenizer("smollm2-135m-instruct").save_pretrained(dense)
    if not (root / "moe" / "config.json").exists():
        upcycle(dense, root / "moe", experts=4, top_k=2)
    common = [f"learning_rate={args.learning_rate}", f"max_steps={args.steps}", f"eval_steps={args.steps}",
              "save_steps=1000", "warmup_steps=5", "logging_steps=5", "progress_bar=false"]
    runs = {"dense": [f"model={dense}"]}
    runs.update({f"moe_aux{c}": [f"model={root / 'moe'}", f"router_aux_loss_coef={c}"] for c in args.coefs})
    for name, overrides in runs.items():
        train("configs/sft.yaml", common + overrides + [f"output_dir={root / 'runs' / name}"])
        logs = [json.loads(line) for line in open(root / "runs" / name / "log_history.jsonl")]
        final = [r for r in logs if "eval_loss" in r][-1]
        speed = [r["tokens_per_s"] for r in logs if "tokens_per_s" in r]
        usage = [round(final[f"eval_expert_utilization_{e}"], 3) for e in range(4)] if name != "dense" else "-"
        print(f"{name}: held-out loss {final['eval_loss']:.3f}, token accuracy {final['eval_token_accuracy']:.3f}, "
              f"balance loss {final.get('eval_router_balance_loss', '-')}, utilisation {usage}, "
              f"median tokens/s {statistics.median(speed):.0f}", flush=True)


if __name__ == "__main__":
    main()
