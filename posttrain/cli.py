"""``posttrain <command>``: a thin shell over the Python API (every command is one call away in a notebook).

Each command is two functions, ``_<command>_parser`` (its arguments) and ``_<command>`` (the call it makes);
``COMMANDS`` lists them in the order ``posttrain --help`` shows them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from posttrain.errors import PosttrainError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.command_function(args)
    except PosttrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain", description="Post-training for language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser, run in COMMANDS.values():
        add_parser(commands).set_defaults(command_function=run)
    return parser


# ------------------------------------------------------------------------------------------------------ train
def _train_parser(commands) -> argparse.ArgumentParser:
    train = commands.add_parser("train", help="train from a config file", add_help=False, description=(
        "Train with a YAML/JSON config. Overrides are key=value; dotted keys reach into sections, e.g. "
        "`posttrain train configs/sft_lora.yaml max_steps=20 lora.r=8 output_dir=runs/x`. "
        "`posttrain train CONFIG --help` lists every key of its method: type, default, the value CONFIG sets, help."))
    train.add_argument("-h", "--help", action="store_true",
                       help="show this help and the methods; with CONFIG or --method, every key of that method")
    train.add_argument("--method", default=None, metavar="NAME",
                       help="with --help: the method whose keys to list (default: CONFIG's `method`)")
    train.add_argument("config", nargs="?", help="a .yaml, .yml or .json config file (its `method` key picks the "
                       "trainer)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.set_defaults(train_parser=train)
    return train


def _train(args) -> int:
    if args.help:
        print(_train_help(args), end="")
        return 0
    if args.config is None:
        args.train_parser.error("the following arguments are required: config")
    if args.method is not None:
        args.train_parser.error("--method goes with --help; to train another method, override it: method=NAME")
    from posttrain.api import train

    evaluation = train(args.config, overrides=args.overrides)
    print(json.dumps(evaluation, indent=2))
    return 0


def _train_help(args) -> str:
    from posttrain.api import describe_method

    if args.config is None and args.method is None:
        from posttrain.trainers import METHODS

        methods = "".join(f"  {name:<10} {config_class.__name__}\n" for name, (config_class, _) in METHODS.items())
        return (f"{args.train_parser.format_help()}\nmethods (`posttrain train --method NAME --help` lists the keys "
                f"of one):\n{methods}")
    return describe_method(args.config, args.overrides, args.method)


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
    generate.add_argument("--device", default="auto")
    return generate


def _generate(args) -> int:
    from posttrain.models import load_model
    from posttrain.rollout.generate import stream_one

    model, tokenizer = load_model(args.model, device=args.device)
    stream_one(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.system)
    return 0


# ------------------------------------------------------------------------------------------------- pipeline
def _pipeline_parser(commands) -> argparse.ArgumentParser:
    pipeline = commands.add_parser("pipeline", help="run training stages in order (e.g. SFT -> reward model -> PPO)",
                                   description="Run the stages of a pipeline file in order, each reading the folders "
                                   "of the stages before it; complete stages are skipped, so running it again after "
                                   "an interruption goes on where it stopped. See configs/rlhf.yaml.")
    pipeline.add_argument("config", help="a pipeline .yaml/.json file (output_dir + stages)")
    pipeline.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the pipeline file")
    return pipeline


def _pipeline(args) -> int:
    from posttrain.pipeline import run_pipeline

    results = run_pipeline(args.config, args.overrides)
    print(json.dumps({name: result.get("metrics", result) for name, result in results.items()}, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------- models
def _models_parser(commands) -> argparse.ArgumentParser:
    return commands.add_parser("models", help="list the built-in model specs and where they come from",
                               description="List the built-in model specs and where they come from.")


def _models(args) -> int:
    from posttrain.models.specs import BUILTIN_SPECS, embedded_cache_dir

    for spec in BUILTIN_SPECS.values():
        print(f"{spec.name}\n  {spec.description}\n  source: {spec.source}")
    cached = (embedded_cache_dir() / "model.safetensors").is_file()
    print(f"\nembedded model cache: {embedded_cache_dir()} ({'ready' if cached else 'not converted yet'})")
    print("Any other spec is tried as a local Hugging Face model folder (full model or LoRA adapter), then as a "
          "hub id (needs the hub or its local cache).")
    return 0


# ----------------------------------------------------------------------------------------------------- demo
def _demo_parser(commands) -> argparse.ArgumentParser:
    demo = commands.add_parser("demo", help="short SFT of the embedded model with a measured before/after",
                               description="Fine-tune the embedded model on the shipped arithmetic data for a few "
                               "minutes and measure held-out accuracy and perplexity before and after.")
    demo.add_argument("--config", default="configs/sft.yaml")
    demo.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts for the generation check")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return demo


def _demo(args) -> int:
    from posttrain.demo import run_demo

    run_demo(args.config, args.overrides, args.eval_prompts)
    return 0


# ------------------------------------------------------------------------------------------------------ gym
def _gym_parser(commands) -> argparse.ArgumentParser:
    from posttrain.gym import ALGORITHMS  # light: gymnasium and torch load only when one runs

    gym = commands.add_parser("gym",
                              help="RL foundations on CartPole: random play to PPO and GRPO (needs the gym extra)",
                              description="Train one algorithm of the Gymnasium learning path on CartPole-v1, "
                              "headless: prints progress, evaluates greedily over 20 episodes, writes "
                              "log_history.jsonl, evaluation.json and returns.png. See docs/gym.md.")
    gym.add_argument("algorithm", choices=list(ALGORITHMS), help="the step of the learning path to run")
    gym.add_argument("--seed", type=int, default=None, help="seed for torch, numpy and the environments (default 0)")
    gym.add_argument("--episodes", type=int, default=None, help="training budget in episodes (default per algorithm)")
    gym.add_argument("--render", default=None, metavar="FILE.gif", help="record one greedy episode as an animated GIF")
    gym.add_argument("--quick", action="store_true", help="a small budget that runs in seconds (what the tests use)")
    gym.add_argument("--output-dir", default=None, help="where the run's files go (default runs/gym/<algorithm>)")
    return gym


def _gym(args) -> int:
    from posttrain.gym import run

    run(args.algorithm, quick=args.quick, seed=args.seed, episodes=args.episodes, render=args.render,
        output_dir=args.output_dir)
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
    result = evaluate(args.model, args.suite, args.seed, args.out, args.device, args.dtype, args.batch_size)
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


# command -> (add its parser, run it), in the order `posttrain --help` lists them
COMMANDS = {
    "train": (_train_parser, _train),
    "generate": (_generate_parser, _generate),
    "pipeline": (_pipeline_parser, _pipeline),
    "models": (_models_parser, _models),
    "demo": (_demo_parser, _demo),
    "gym": (_gym_parser, _gym),
    "eval": (_evaluate_parser, _evaluate),
    "compare": (_compare_parser, _compare),
    "plot": (_plot_parser, _plot),
}


if __name__ == "__main__":
    sys.exit(main())
