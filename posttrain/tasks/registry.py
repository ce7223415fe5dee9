"""The name -> task table and `get_task`, the one way a config names a task."""

from __future__ import annotations

from dataclasses import fields

from posttrain.errors import ConfigError
from posttrain.tasks.addition import LongAdditionTask
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Task
from posttrain.tasks.constraints import ConstraintsTask
from posttrain.tasks.verbosity import VerbosityTask
from posttrain.tasks.word_problems import WordProblemsTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (ArithmeticTask, WordProblemsTask, ConstraintsTask, VerbosityTask, LongAdditionTask)
}


def task_options(name: str) -> list[str]:
    return [f.name for f in fields(TASKS[name]) if f.init]


def get_task(name: str, **options) -> Task:
    """The task `name` built with `options`; a ConfigError names an unknown task or option and lists the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    allowed = task_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options are: {', '.join(allowed)}")
    return TASKS[name](**options)
