"""What ``task_accuracy`` adds for reasoning chains: the share of written steps that are correct, and every accuracy
broken down by a property of the problems (word problems' number of steps, additions' number of digits).

    steps_correct      = sum_i c_i / sum_i t_i   over greedy answers with t_i > 0 written steps, c_i of them correct
                         (the task's ``check_steps``: each equation checked on its own, posttrain.tasks.steps; a
                         scratchpad's columns against the true ones, posttrain.tasks.addition); SE by the delta
                         method (a ratio of sums over independent answers, as for perplexity)
    steps_written      = (1/N) sum_i t_i          over all N greedy answers (0 for a direct answer)
    accuracy/steps=k   = the accuracy over the problems whose group value is k (likewise self_consistency@K,
                         best_of@N and steps_correct), each with its own n and SE
"""

from __future__ import annotations

from posttrain.eval.estimators import ratio_and_standard_error
from posttrain.eval.result import MetricResult, Value, try_each

# per-sample field -> the value it is averaged into (a sample lacking the field, or None there, is left out)
_GROUPED = {"correct": "accuracy", "voted_correct": "self_consistency@{k}", "best_correct": "best_of@{n}"}


def group_value(problem, field: str):
    """The problem's ``meta[field]``; a list (word problems' equations) counts by its length."""
    value = problem.meta[field]
    return len(value) if isinstance(value, list) else value


def steps_values(counts: list[tuple[int, int]]) -> dict[str, Value]:
    """``steps_correct`` and ``steps_written`` of the module docstring from ``(correct, written)`` per answer."""
    chains = [(c, t) for c, t in counts if t > 0]
    values = {"steps_written": Value(sum(t for _, t in counts) / len(counts), len(counts)) if counts
              else Value(None, 0)}
    if chains:
        ratio, stderr = ratio_and_standard_error([float(c) for c, _ in chains], [float(t) for _, t in chains])
        values["steps_correct"] = Value(ratio, len(chains), stderr, higher_is_better=True)
    else:  # no answer wrote a step (a direct-answer model): nothing to score
        values["steps_correct"] = Value(None, 0, None, higher_is_better=True)
    return values


def add_steps_correct(task, problems: list, texts: list[str], result: MetricResult) -> None:
    """The greedy answers' steps: values ``steps_correct``, ``steps_written``; each sample's counts."""
    counts = try_each(lambda item: task.check_steps(*item), list(zip(problems, texts)), result.failures,
                      "step checker")
    result.values.update(steps_values([c for c in counts if c is not None]))
    for record, count in zip(result.samples, counts):
        record.update(steps_correct=None if count is None else count[0],
                      steps_written=None if count is None else count[1])


def add_groups(field: str, problems: list, result: MetricResult, self_consistency: int = 0, best_of: int = 0) -> None:
    """``accuracy/<field>=<value>`` per group (then self_consistency@k, best_of@n and steps_correct per group, when
    measured), groups in the order of their values; each sample records its group."""
    from posttrain.eval.metrics.answers import mean_value

    groups = [group_value(p, field) for p in problems]
    for record, group in zip(result.samples, groups):
        record[field] = group
    members = {group: [r for r, g in zip(result.samples, groups) if g == group] for group in sorted(set(groups))}
    for key, name in _GROUPED.items():
        if result.samples and key in result.samples[0]:
            for group, records in members.items():
                scored = [float(r[key]) for r in records if r.get(key) is not None]
                result.values[f"{name.format(k=self_consistency, n=best_of)}/{field}={group}"] = mean_value(scored, True)
    if result.samples and "steps_written" in result.samples[0]:
        for group, records in members.items():
            counts = [(r["steps_correct"], r["steps_written"]) for r in records if r["steps_written"] is not None]
            result.values[f"steps_correct/{field}={group}"] = steps_values(counts)["steps_correct"]
