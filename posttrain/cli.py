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
    train.add_argument("--nproc", type=int, default=None, metavar="N",
                       help="train in N processes on this machine: runs `torchrun --standalone --nproc_per_node N -m "
                            "posttrain train CONFIG ...` (one per GPU, or N CPU processes; docs/distributed.md)")
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
    if args.nproc is not None:
        import os

        from posttrain.engine.distributed import torchrun_command

        command = torchrun_command(args.nproc, ["train", args.config, *args.overrides])
        os.execv(command[0], command)  # torchrun takes over this process; its exit status is the run's
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


# ---------------------------------------------------------------------------------------------------- label
def _label_parser(commands) -> argparse.ArgumentParser:
    label = commands.add_parser("label", help="sample completions and write AI-judged preference pairs (RLAIF)",
                                description="Sample k completions per prompt from a policy, judge their pairs with "
                                "an LLM, reward-model or rule judge, and write pairs.jsonl that DPO, KTO, ORPO and "
                                "SimPO read unchanged. See configs/label.yaml and docs/ai_feedback.md.")
    label.add_argument("config", help="a .yaml/.json label config (method: label)")
    label.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return label


def _label(args) -> int:
    from posttrain.api import label

    print(json.dumps(label(args.config, args.overrides), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------- constitution
def _constitution_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("constitution", help="critique -> revise with a constitution (SL-CAI): SFT rows",
                                 description="For each prompt the model answers, critiques its answer against a "
                                 "sampled principle and revises it, n rounds; writes chains.jsonl and sft.jsonl "
                                 "(prompt, final revision). See configs/constitution_sl.yaml and docs/ai_feedback.md.")
    parser.add_argument("config", help="a .yaml/.json config (method: constitution)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def _constitution(args) -> int:
    from posttrain.api import constitution

    print(json.dumps(constitution(args.config, args.overrides), indent=2))
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


# ---------------------------------------------------------------------------------------------------- merge
def _merge_parser(commands) -> argparse.ArgumentParser:
    merge = commands.add_parser("merge", help="merge models or LoRA adapters (linear, task arithmetic, TIES, DARE, "
                                "SLERP)", description="Merge models or LoRA adapters tensor by tensor as a YAML/JSON "
                                "config says (method, models with weights, base, parameters, out); writes a plain HF "
                                "folder with a model card. See docs/model_ops.md.")
    merge.add_argument("config", help="a merge .yaml/.json file")
    merge.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. parameters.t=0.3")
    return merge


def _merge(args) -> int:
    from posttrain.api import merge

    print(merge(args.config, args.overrides))
    return 0


# ---------------------------------------------------------------------------------------------------- prune
def _prune_parser(commands) -> argparse.ArgumentParser:
    prune = commands.add_parser("prune", help="drop decoder layers: a smaller student as a plain HF folder",
                                description="Depth pruning: keep N decoder layers (the most influential on a "
                                "calibration set, ShortGPT's block influence; or a fixed deep-block pattern) or the "
                                "layers named; writes a plain HF folder with pruning.json. See docs/distillation.md.")
    prune.add_argument("--model", required=True, help="a model spec: built-in name, local folder or hub id")
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep-layers", type=int, metavar="N", help="how many decoder layers to keep")
    which.add_argument("--layers", metavar="I,J,...", help="the indices of the layers to keep, e.g. 0,1,2,29")
    prune.add_argument("--select", default="block-influence", choices=["block-influence", "deep-block"],
                       help="with --keep-layers: drop the lowest block-influence layers (default), or the deepest "
                            "layers but the last")
    prune.add_argument("--calibration", default=None, help="JSONL for block influence (text, prompt/completion or "
                                                           "messages); default: a few built-in texts")
    prune.add_argument("--calibration-rows", type=int, default=64, help="rows of --calibration to use")
    prune.add_argument("--out", required=True, help="the output folder")
    prune.add_argument("--device", default="cpu")
    return prune


def _prune(args) -> int:
    from posttrain.models.pruning import parse_layers, prune_model

    report = prune_model(args.model, args.out, args.keep_layers, parse_layers(args.layers), args.select,
                         args.calibration, args.calibration_rows, args.device)
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------------------------------- export
def _export_parser(commands) -> argparse.ArgumentParser:
    export = commands.add_parser("export", help="write a model as one GGUF file (llama.cpp, Ollama, LM Studio)",
                                 description="Export a llama-architecture model folder (e.g. runs/x/final) to GGUF "
                                 "with its tokenizer and chat template, using the gguf package's writer. See "
                                 "docs/model_ops.md.")
    export.add_argument("--model", required=True, help="model folder, or smollm2-135m-instruct")
    export.add_argument("--gguf", default="f16", metavar="TYPE", help="tensor type of the weights: f32, f16, bf16, "
                        "q8_0, q5_1, q5_0, q4_1, q4_0 (default f16; norms stay f32)")
    export.add_argument("--out", required=True, help="the .gguf file to write")
    export.add_argument("--tokenizer-pre", default=None, help="llama.cpp pre-tokenizer name (default: read off "
                        "tokenizer.json: gpt-2 or smollm)")
    return export


def _export(args) -> int:
    from posttrain.api import export

    print(export(args.model, args.out, args.gguf, args.tokenizer_pre))
    return 0


# -------------------------------------------------------------------------------------------------- upcycle
def _upcycle_parser(commands) -> argparse.ArgumentParser:
    upcycle = commands.add_parser("upcycle", help="turn a dense model into a mixture of experts (sparse upcycling)",
                                  description="Copy each MLP of a llama-architecture model into E experts behind a "
                                  "new top-k router (Komatsuzaki et al. 2023); writes a transformers Mixtral folder "
                                  "that computes the dense model's function until trained. See docs/model_ops.md.")
    upcycle.add_argument("--model", required=True, help="model folder or built-in name")
    upcycle.add_argument("--experts", type=int, default=4, help="experts per layer (default 4)")
    upcycle.add_argument("--top-k", type=int, default=2, help="experts each token is routed to (default 2)")
    upcycle.add_argument("--seed", type=int, default=0, help="seed of the routers' initialisation")
    upcycle.add_argument("--aux-loss-coef", type=float, default=0.01,
                         help="router_aux_loss_coef written to the config (default 0.01)")
    upcycle.add_argument("--out", required=True, help="output folder")
    return upcycle


def _upcycle(args) -> int:
    from posttrain.api import upcycle

    print(upcycle(args.model, args.out, args.experts, args.top_k, args.seed, args.aux_loss_coef))
    return 0


# ------------------------------------------------------------------------------------------------- quantize
def _quantize_parser(commands) -> argparse.ArgumentParser:
    quantize = commands.add_parser("quantize", help="quantize a model's weights for inference (torchao: int8, int4)",
                                   description="Quantize the linear layers of a model folder with torchao and write "
                                   "a folder that posttrain and transformers load like any model (needs the "
                                   "quantize extra). See docs/model_ops.md.")
    quantize.add_argument("--model", required=True, help="model folder, or smollm2-135m-instruct")
    quantize.add_argument("--format", default="int8", help="int8 (weight-only), int8-dynamic (int8 weights and "
                          "activations), int4 (weight-only, group-wise); default int8")
    quantize.add_argument("--group-size", type=int, default=None, help="inputs per scale (default: one scale per "
                          "row for int8, 32 for int4)")
    quantize.add_argument("--out", required=True, help="output folder")
    return quantize


def _quantize(args) -> int:
    from posttrain.api import quantize

    print(quantize(args.model, args.out, args.format, args.group_size))
    return 0


# ----------------------------------------------------------------------------------------------------- push
def _push_parser(commands) -> argparse.ArgumentParser:
    push = commands.add_parser("push", help="upload a trained folder (e.g. RUN/final) to the Hugging Face Hub",
                               description="Upload a model folder as it is (weights, tokenizer, README.md model card) "
                                           "to a Hub repository, creating it if needed. Needs a token: "
                                           "`huggingface-cli login` or HF_TOKEN.")
    push.add_argument("--model", required=True, help="the folder to upload: a run's final/, or any HF model folder")
    push.add_argument("--repo", required=True, help="the repository id, e.g. your-name/smollm2-grpo")
    push.add_argument("--private", action="store_true", help="create the repository private")
    return push


def _push(args) -> int:
    from posttrain.api import push

    print(push(args.model, args.repo, private=args.private))
    return 0


# command -> (add its parser, run it), in the order `posttrain --help` lists them
COMMANDS = {
    "train": (_train_parser, _train),
    "generate": (_generate_parser, _generate),
    "pipeline": (_pipeline_parser, _pipeline),
    "label": (_label_parser, _label),
    "constitution": (_constitution_parser, _constitution),
    "models": (_models_parser, _models),
    "demo": (_demo_parser, _demo),
    "gym": (_gym_parser, _gym),
    "eval": (_evaluate_parser, _evaluate),
    "compare": (_compare_parser, _compare),
    "plot": (_plot_parser, _plot),
    "merge": (_merge_parser, _merge),
    "export": (_export_parser, _export),
    "upcycle": (_upcycle_parser, _upcycle),
    "quantize": (_quantize_parser, _quantize),
    "prune": (_prune_parser, _prune),
    "predict": (_predict_parser, _predict),
    "push": (_push_parser, _push),
}


if __name__ == "__main__":
    sys.exit(main())
