"""The main demo: a short SFT of the embedded model, measured on held-out data before and after.

Held-out measures (questions never seen in training):
- answer accuracy: greedy generation, the N in "The answer is N." equals the true answer;
- format rate: the generation contains "The answer is N." at all;
- mean reply length in words;
- perplexity of the reference completions (from the run's step-0 and final evaluations).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from posttrain.api import build_method_config
from posttrain.data.sources import load_rows
from posttrain.data.synthetic import parse_answer
from posttrain.io import atomic_write_text
from posttrain.models import load_model
from posttrain.rollout.generate import generate


def answer_metrics(model, tokenizer, rows: list[dict], max_new_tokens: int = 40) -> dict:
    replies = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens)
    parsed = [parse_answer(reply) for reply in replies]
    return {
        "answer_accuracy": sum(p == r["answer"] for p, r in zip(parsed, rows)) / len(rows),
        "format_rate": sum(p is not None for p in parsed) / len(rows),
        "mean_words": statistics.mean(len(reply.split()) for reply in replies),
        "n_prompts": len(rows),
        "examples": [{"prompt": r["prompt"], "reply": reply} for r, reply in zip(rows[:3], replies[:3])],
    }


def run_demo(config_path: str, overrides: list[str], n_prompts: int) -> dict:
    # the demo is a fresh run each time (a preset resumes a crashed run instead); an override can still say otherwise
    train_function, config = build_method_config(config_path, ["overwrite_output_dir=true", *overrides])
    eval_path = config.data.eval_path or config.data.path
    rows = [r.values for r in load_rows(eval_path, config.data.eval_split)][:n_prompts]
    started = time.perf_counter()

    print(f"[1/3] before: greedy answers of {config.model} on {len(rows)} held-out questions")
    model, tokenizer = load_model(config.model)
    before = answer_metrics(model, tokenizer, rows)
    del model

    print(f"[2/3] SFT: {config.max_steps} steps into {config.output_dir}")
    evaluation = train_function(config)

    print("[3/3] after: the same questions")
    model, tokenizer = load_model(str(Path(config.output_dir) / "final"))
    after = answer_metrics(model, tokenizer, rows)

    result = {"before": before, "after": after, "perplexity_before": evaluation.get("baseline", {}).get("perplexity"),
              "perplexity_after": evaluation["metrics"].get("perplexity", {}).get("value"),
              "wall_seconds": time.perf_counter() - started}
    atomic_write_text(Path(config.output_dir) / "demo_results.json", json.dumps(result, indent=2) + "\n")
    print(f"\n{'held-out (' + str(len(rows)) + ' questions)':<34}{'before':>10}{'after':>10}")
    for key in ("answer_accuracy", "format_rate", "mean_words"):
        print(f"{key:<34}{before[key]:>10.3f}{after[key]:>10.3f}")
    if result["perplexity_before"] is not None:
        print(f"{'perplexity of reference answers':<34}{result['perplexity_before']:>10.3f}{result['perplexity_after']:>10.3f}")
    print(f"\nexample after: {after['examples'][0]['prompt']!r} -> {after['examples'][0]['reply']!r}")
    print(f"total {result['wall_seconds']:.0f} s; results in {Path(config.output_dir) / 'demo_results.json'}")
    return result
