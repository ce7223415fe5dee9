"""``posttrain <command>``: a thin shell over the Python API (every command is one call away in a notebook).

Each command is two functions, ``_<command>_parser`` (its arguments) and ``_<command>`` (the call it makes), in
the module of its group (``training``, ``evaluation``, ``model_ops``); each module's ``COMMANDS`` table lists its
commands, in the order ``posttrain --help`` shows them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from posttrain.cli import evaluation, model_ops, training
from posttrain.errors import PosttrainError


# Import-time chatter of optional libraries that says nothing about the user's run (peft imports torchao when it is
# installed, which warns about Triton and missing CUDA kernels on every command).
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
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


# command -> (add its parser, run it), in the order `posttrain --help` lists them
COMMANDS = {**training.COMMANDS, **evaluation.COMMANDS, **model_ops.COMMANDS}
