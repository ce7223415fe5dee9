"""Verifiable tasks: seeded problem generators with disjoint train/eval splits, and programs that check completions.

Tasks: `arithmetic`, `word_problems`, `constraints`, `verbosity` (see docs/tasks.md). Rewards: each task's checker,
any `module:function` callable, weighted and logged separately (`posttrain.tasks.rewards`). Standard library only.
"""

from posttrain.tasks.arithmetic import ArithmeticTask, extract_answer, parse_answer
from posttrain.tasks.base import Problem, RewardFn, Task, split_of
from posttrain.tasks.constraints import ConstraintsTask, check_constraint
from posttrain.tasks.registry import TASKS, get_task
from posttrain.tasks.rewards import CombinedReward, RewardSpec, WeightedReward, build_reward, load_function
from posttrain.tasks.verbosity import VerbosityTask, count_words
from posttrain.tasks.word_problems import WordProblemsTask

__all__ = [
    "TASKS",
    "ArithmeticTask",
    "CombinedReward",
    "ConstraintsTask",
    "Problem",
    "RewardFn",
    "RewardSpec",
    "Task",
    "VerbosityTask",
    "WeightedReward",
    "WordProblemsTask",
    "build_reward",
    "check_constraint",
    "count_words",
    "extract_answer",
    "get_task",
    "load_function",
    "parse_answer",
    "split_of",
]
