"""The ``constitution`` metric: how often the model's greedy answers obey a constitution's principles, as the
principles' own checkers read them (``posttrain.rollout.constitution``; Bai et al. 2022 made measurable).

For every principle with a checker, ``<principle>`` is the share of answers it accepts (higher is better); ``all``
is the share that every checker accepts. The prompts are a file's rows or a task's held-out problems, so the same
figure is read before and after a constitutional run (configs/constitutional_concise.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from posttrain.config import option
from posttrain.data.sources import load_rows
from posttrain.errors import ConfigError
from posttrain.eval.context import EvalContext
from posttrain.eval.metrics.answers import mean_value
from posttrain.eval.prompts import resolve_path
from posttrain.eval.result import MetricResult, try_each
from posttrain.rollout.constitution import Constitution, load_constitution
from posttrain.tasks import get_task


@dataclass
class ConstitutionOptions:
    constitution: str = option("configs/constitutions/concise.yaml", help="the constitution file (YAML/JSON) whose "
                                                                          "principles' checkers read the answers")
    prompts: str | None = option(None, help="a .jsonl/.json/.csv file with a prompt column; None: the task's "
                                            "held-out problems")
    task: str = option("arithmetic", help="where the prompts come from when prompts is None (posttrain.tasks)")
    task_options: dict[str, Any] = option(default_factory=dict, help="keyword options of the task's generator")
    split: Literal["train", "eval"] = option("eval", help="the task split the problems come from")
    n: int = option(40, min=1, help="the first N rows of prompts, or N problems of the task")
    max_new_tokens: int = option(48, min=1, help="longest greedy answer, in tokens")

    def __post_init__(self) -> None:
        if not self.load().checked:
            raise ConfigError(f"constitution metric: {self.constitution} has no principle with a checker to measure")
        if self.prompts is None:
            get_task(self.task, **self.task_options)  # an unknown task fails now, not after generating

    def load(self) -> Constitution:
        return load_constitution(resolve_path(self.constitution))


def constitution_prompts(options: ConstitutionOptions, seed: int) -> list[str]:
    if options.prompts is None:
        task = get_task(options.task, **options.task_options)
        return [p.prompt for p in task.problems(options.split, options.n, seed)]
    rows = load_rows(resolve_path(options.prompts))[: options.n]
    for row in rows:
        if not isinstance(row.values.get("prompt"), str):
            raise ConfigError(f"{row.where}: the constitution metric needs a text 'prompt' column")
    return [row.values["prompt"] for row in rows]


def constitution(context: EvalContext, options: ConstitutionOptions) -> MetricResult:
    principles = options.load().checked
    prompts = constitution_prompts(options, context.seed)
    texts = context.generate(context.policy, prompts, options.max_new_tokens).texts
    result = MetricResult(details={"constitution": options.constitution, "prompts": options.prompts or options.task})
    verdicts = {p.name: try_each(lambda item, p=p: p.complies(*item), list(zip(prompts, texts)), result.failures,
                                 f"{p.name} checker") for p in principles}
    for name, flags in verdicts.items():
        result.values[name] = mean_value([float(f) for f in flags if f is not None], higher_is_better=True)
    every = [all(flags[i] for flags in verdicts.values()) for i in range(len(prompts))
             if all(flags[i] is not None for flags in verdicts.values())]
    result.values["all"] = mean_value([float(f) for f in every], higher_is_better=True)
    result.samples = [{"prompt": prompt, "output": text, **{name: flags[i] for name, flags in verdicts.items()}}
                      for i, (prompt, text) in enumerate(zip(prompts, texts))]
    return result
