"""Verifiable tasks: seeded problem generators with disjoint train/eval splits, and programs that check completions.

Tasks: `arithmetic`, `word_problems`, `constraints`, `verbosity`, `long_addition` (see docs/tasks.md). Each task's
checker is a reward function; weighting it with others (user callables, reward models) is `posttrain.rollout.rewards`.
Standard library only.
"""

from posttrain.tasks.addition import LongAdditionTask
from posttrain.tasks.arithmetic import ArithmeticTask, extract_answer, parse_answer
from posttrain.tasks.base import Problem, RewardFn, Task, split_of
from posttrain.tasks.constraints import ConstraintsTask, check_constraint
from posttrain.tasks.registry import TASKS, get_task
from posttrain.tasks.verbosity import VerbosityTask, count_words
from posttrain.tasks.word_problems import WordProblemsTask

__all__ = [
    "TASKS",
    "ArithmeticTask",
    "ConstraintsTask",
    "LongAdditionTask",
    "Problem",
    "RewardFn",
    "Task",
    "VerbosityTask",
    "WordProblemsTask",
    "check_constraint",
    "count_words",
    "extract_answer",
    "get_task",
    "parse_answer",
    "split_of",
]
