"""Training commands: train (and --nproc), pipeline, label, demo, gym, constitution."""

from __future__ import annotations

import argparse
import json


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


COMMANDS = {
    "train": (_train_parser, _train),
    "pipeline": (_pipeline_parser, _pipeline),
    "label": (_label_parser, _label),
    "demo": (_demo_parser, _demo),
    "gym": (_gym_parser, _gym),
    "constitution": (_constitution_parser, _constitution),
}
