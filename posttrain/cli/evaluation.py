"""Evaluation and generation commands: generate, eval, compare, plot, predict."""

from __future__ import annotations

import argparse
import json
import sys


# ------------------------------------------------------------------------------------------------- generate
def _generate_parser(commands) -> argparse.ArgumentParser:
    generate = commands.add_parser("generate", help="generate a reply to a prompt (chat template applied, streamed)",
                                   description="Generate a reply from a model spec or a trained folder.")
    generate.add_argument("--model", default="smollm2-135m-instruct",
                          help="built-in name, HF folder (e.g. runs/x/final) or hub id")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--system", default=None, help="optional system message")
    generate.add_argument("--max-new-tokens", type=int, default=256)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--self-consistency", type=int, default=0, metavar="K",
                          help="sample K answers (at --temperature, 0.7 when left at 0), parse each one's final "
                               "number and print their majority vote (Wang et al. 2023)")
    generate.add_argument("--device", default="auto")
    generate.add_argument("--best-of", type=int, default=1, metavar="N",
                          help="sample N replies (temperature 1 when --temperature is 0) and print the one --judge "
                               "ranks first")
    generate.add_argument("--judge", default=None, metavar="SPEC", help="with --best-of: a judge mapping, e.g. "
                          "'{rule: arithmetic}', '{reward_model: runs/reward/final}', '{pairwise: MODEL}'")
    return generate


def _generate(args) -> int:
    from posttrain.models import load_model
    from posttrain.rollout.generate import stream_one

    if args.best_of > 1:
        from posttrain.rollout.best_of_n import generate_best_of

        print(generate_best_of(args.model, args.prompt, args.best_of, args.judge, args.max_new_tokens,
                               args.temperature or 1.0, args.system, args.device)["best"])
        return 0
    model, tokenizer = load_model(args.model, device=args.device)
    if args.self_consistency:
        from posttrain.rollout.generate import self_consistent_generate

        print(json.dumps(self_consistent_generate(model, tokenizer, args.prompt, args.self_consistency,
                                                  args.max_new_tokens, args.temperature or 0.7, system=args.system),
                         indent=2))
        return 0
    stream_one(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.system)
    return 0


# ----------------------------------------------------------------------------------------------------- eval
def _evaluate_parser(commands) -> argparse.ArgumentParser:
    evaluate = commands.add_parser("eval", help="evaluate a model on a metric suite -> evaluation.json",
                                   description="Run a metric suite (perplexity, verbosity, task accuracy, reward, KL, "
                                   "win rate, preference accuracy, reward-hacking probes) on a model and write "
                                   "evaluation.json and its samples file. See docs/eval.md.")
    evaluate.add_argument("--model", required=True, help="built-in name, model or LoRA folder (e.g. runs/x/final), "
                          "or hub id")
    evaluate.add_argument("--suite", default="default", help="built-in suite (default, quick) or a .yaml/.json file")
    evaluate.add_argument("--out", default=None, help="evaluation file to write (default: <model folder>/"
                          "evaluation.json; required when the model is not a folder)")
    evaluate.add_argument("--seed", type=int, default=0, help="seeds problem draws and sampling (default 0)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--dtype", default="auto")
    evaluate.add_argument("--batch-size", type=int, default=32, help="completions generated together (default 32)")
    evaluate.add_argument("--lm-eval", default=None, metavar="TASKS", help="instead of --suite: EleutherAI's "
                          "lm-evaluation-harness tasks, comma-separated (needs the lm-eval extra)")
    evaluate.add_argument("--lm-eval-include", default=None, metavar="DIR", help="a folder of lm-eval task YAML files "
                          "(local tasks, no network), e.g. configs/lm_eval")
    evaluate.add_argument("--limit", type=int, default=None, help="with --lm-eval: the first N documents per task")
    return evaluate


def _evaluate(args) -> int:
    """``posttrain eval``: exit 1 when a metric failed as a whole (its error is in evaluation.json)."""
    from pathlib import Path

    from posttrain.errors import ConfigError
    from posttrain.eval import evaluate
    from posttrain.eval.harness import summary_table

    if args.out is None and not Path(args.model).is_dir():
        raise ConfigError(f"--out is required when the model is not a folder ({args.model!r}), e.g. "
                          "--out baseline.json")
    suite = args.suite
    if args.lm_eval:
        suite = [{"metric": "lm_eval", "tasks": args.lm_eval.split(","), "include_path": args.lm_eval_include,
                  "limit": args.limit}]
    result = evaluate(args.model, suite, args.seed, args.out, args.device, args.dtype, args.batch_size)
    print(summary_table(result))
    print(f"\nwrote {args.out or Path(args.model) / 'evaluation.json'} ({result['time_s']:.0f} s)")
    return 1 if result["failed_metrics"] else 0


# -------------------------------------------------------------------------------------------------- compare
def _compare_parser(commands) -> argparse.ArgumentParser:
    compare = commands.add_parser("compare", help="evaluations side by side; --fail-on-regression for CI",
                                  description="Print evaluation files (or run folders holding one) side by side, "
                                  "marking changes larger than the noise; with --fail-on-regression exit 1 when a "
                                  "metric got worse than the baseline by more than the threshold, or a metric of "
                                  "the baseline is missing, or an evaluation is incomplete. RUN reads the harness's "
                                  "evaluation of RUN/final when there is one; RUN@trainer the trainer's own, "
                                  "RUN@baseline its step-0 values. See docs/eval.md.")
    compare.add_argument("evaluations", nargs="+", metavar="EVALUATION", help="evaluation.json files or run folders")
    compare.add_argument("--baseline", default=None, help="the evaluation to compare against (default: the first)")
    compare.add_argument("--markdown", default=None, metavar="FILE.md", help="also write the table as Markdown")
    compare.add_argument("--csv", default=None, metavar="FILE.csv", help="also write the values as CSV (long format)")
    compare.add_argument("--probes", default=None, metavar="FILE.md",
                         help="write the reward-hacking probes' answers and rewards side by side")
    compare.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a metric regressed")
    compare.add_argument("--threshold", action="append", default=None, metavar="[METRIC=]X",
                         help="regression threshold, relative to the baseline value (default 0.05); repeatable, "
                         "METRIC=X for one metric")
    compare.add_argument("--sigmas", type=float, default=2.0,
                         help="a change is beyond noise above this many standard errors of the difference (default 2)")
    return compare


def _compare(args) -> int:
    """``posttrain compare``: exit 1 with --fail-on-regression when a metric regressed against the baseline."""
    from posttrain.errors import ConfigError
    from posttrain.eval import compare, read_evaluation
    from posttrain.eval.compare import csv_table, different_methods, markdown_table, probe_table, text_table
    from posttrain.io import atomic_write_text

    evaluations = [read_evaluation(argument) for argument in args.evaluations]
    baseline = args.evaluations[0] if args.baseline is None else args.baseline
    if baseline not in args.evaluations:
        evaluations.insert(0, read_evaluation(baseline))
        args.evaluations.insert(0, baseline)
    comparison = compare(evaluations, args.evaluations.index(baseline), args.threshold, args.sigmas)
    if not comparison.rows:
        raise ConfigError("these evaluations have no metrics to compare")
    print(text_table(comparison))
    for path, text in ((args.markdown, markdown_table), (args.csv, csv_table), (args.probes, probe_table)):
        if path:
            atomic_write_text(path, text(evaluations if text is probe_table else comparison))
            print(f"wrote {path}")
    missing = comparison.missing()
    for line in missing:
        print(f"not compared: {line}", file=sys.stderr)
    incomplete = [f"{e.label}: status {e.status!r} (an interrupted evaluation)" for e in evaluations
                  if e.status not in (None, "complete")]
    for line in incomplete:
        print(f"incomplete: {line}", file=sys.stderr)
    for line in different_methods(evaluations):
        print(f"note: {line}", file=sys.stderr)
    regressions = comparison.regressions()
    for line in regressions:
        print(f"regression: {line}", file=sys.stderr)
    # a CI gate fails on what it could not check as well as on what got worse
    return 1 if args.fail_on_regression and (regressions or missing or incomplete) else 0


# ------------------------------------------------------------------------------------------------------ plot
def _plot_parser(commands) -> argparse.ArgumentParser:
    plot = commands.add_parser("plot", help="PNG curves (loss, reward, KL, accuracy...) of a run's log",
                               description="Plot a run's log_history.jsonl against step into RUN/plots/*.png "
                               "(needs matplotlib: pip install 'posttrain[plot]').")
    plot.add_argument("run", help="a run folder holding log_history.jsonl")
    plot.add_argument("--out", default=None, help="folder for the PNGs (default RUN/plots)")
    return plot


def _plot(args) -> int:
    from posttrain.eval.plot import plot_run

    for path in plot_run(args.run, args.out):
        print(path)
    return 0


# -------------------------------------------------------------------------------------------------- predict
def _predict_parser(commands) -> argparse.ArgumentParser:
    predict = commands.add_parser("predict", help="label texts with a trained classifier (method: classify)",
                                  description="Predict the label (or value) of every row of a file with a classifier "
                                  "folder; rows with a label column also give accuracy / F1 (or MSE, correlations).")
    predict.add_argument("--model", required=True, help="a classifier folder, e.g. runs/classify/final")
    predict.add_argument("--input", required=True, help="a .jsonl/.json/.csv/.parquet file with a text column "
                                                        "(and text_pair, label when present)")
    predict.add_argument("--output", default=None, help="predictions JSONL; default: INPUT.predictions.jsonl")
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--device", default="auto")
    return predict


def _predict(args) -> int:
    from posttrain.trainers.classify import predict_file

    result = predict_file(args.model, args.input, args.output, args.batch_size, args.device)
    print(json.dumps(result, indent=2))
    return 0


COMMANDS = {
    "generate": (_generate_parser, _generate),
    "eval": (_evaluate_parser, _evaluate),
    "compare": (_compare_parser, _compare),
    "plot": (_plot_parser, _plot),
    "predict": (_predict_parser, _predict),
}
