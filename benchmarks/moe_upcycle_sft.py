"""Tiny-model evidence for sparse upcycling (docs/results.md): SFT (configs/sft.yaml, 60 steps, lr 1e-3) of a random
tiny llama and of its 4-expert top-2 upcycle with router_aux_loss_coef 0 / 0.01 / 0.1; prints held-out loss, token
accuracy, balance loss and expert utilisation. Run from the repository root:
    .venv/bin/python benchmarks/moe_upcycle_sft.py [OUT_DIR]          (default runs/moe_upcycle_tiny)
"""

import json
import sys
from pathlib import Path

from posttrain.api import train, upcycle
from posttrain.models import build_tiny_model
from posttrain.models.loading import load_tokenizer

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/moe_upcycle_tiny")
COMMON = ["learning_rate=1e-3", "max_steps=60", "eval_steps=60", "save_steps=1000", "warmup_steps=5",
          "logging_steps=10", "progress_bar=false"]


def main() -> None:
    build_tiny_model(0).save_pretrained(ROOT / "dense")
    load_tokenizer("smollm2-135m-instruct").save_pretrained(ROOT / "dense")
    upcycle(str(ROOT / "dense"), ROOT / "moe", experts=4, top_k=2)
    runs = {"dense": [f"model={ROOT / 'dense'}"]}
    runs.update({f"moe_aux{c}": [f"model={ROOT / 'moe'}", f"router_aux_loss_coef={c}"] for c in ("0", "0.01", "0.1")})
    for name, overrides in runs.items():
        train("configs/sft.yaml", COMMON + overrides + [f"output_dir={ROOT / 'runs' / name}"])
        logs = [json.loads(line) for line in open(ROOT / "runs" / name / "log_history.jsonl")]
        final = [r for r in logs if "eval_loss" in r][-1]
        usage = [round(final[f"eval_expert_utilization_{e}"], 3) for e in range(4)] if name != "dense" else "-"
        print(f"{name}: held-out loss {final['eval_loss']:.3f}, token accuracy {final['eval_token_accuracy']:.3f}, "
              f"balance loss {final.get('eval_router_balance_loss', '-')}, utilisation {usage}", flush=True)


if __name__ == "__main__":
    main()
