"""EleutherAI's lm-evaluation-harness as one metric of the suite (``posttrain eval --lm-eval TASKS``).

The evaluated model, already in memory, goes to the harness through its Hugging Face class (``HFLM``), so a trained
``final/``, the embedded GGUF model and a LoRA adapter are evaluated exactly as posttrain loaded them. Tasks are the
harness's own names, or tasks defined in local YAML files (``include_path``): with local data they need no network.
Each task's figures come back as this entry's values (``lm_eval/<task>/<metric>``, with the harness's sample count
and standard error), so they land in the same evaluation.json and ``posttrain compare`` reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from posttrain.config import option
from posttrain.errors import ConfigError, require
from posttrain.eval.result import MetricResult, Value


@dataclass
class LmEvalOptions:
    tasks: list[str] = option(default_factory=list, help="lm-evaluation-harness task (or group) names")
    include_path: str | None = option(None, help="a folder of task YAML files to add to the harness's own")
    num_fewshot: int | None = option(None, min=0, help="few-shot examples per prompt; None: each task's default")
    limit: int | None = option(None, min=1, help="the first N documents of each task; None: all")
    batch_size: int = option(8, min=1, help="requests per forward pass")
    apply_chat_template: bool = option(False, help="format prompts with the model's chat template")
    samples: bool = option(True, help="keep each document's target and response in the samples file")


def lm_eval(context, options: LmEvalOptions) -> MetricResult:
    if not options.tasks:
        raise ConfigError("lm_eval: give at least one task (tasks: [name, ...])")
    require("lm_eval", "lm-eval", "the lm_eval metric (posttrain eval --lm-eval)")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    handle = context.policy
    model = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=options.batch_size,
                 device=str(next(handle.model.parameters()).device))
    manager = TaskManager(include_path=options.include_path)
    unknown = [task for task in options.tasks if task not in manager.all_tasks]
    if unknown:
        where = f" or in {options.include_path}" if options.include_path else " (local YAML tasks: include_path)"
        raise ConfigError(f"lm_eval: unknown task(s) {', '.join(unknown)}: not in the harness{where}")
    output = simple_evaluate(model=model, tasks=options.tasks, num_fewshot=options.num_fewshot, limit=options.limit,
                             task_manager=manager, log_samples=options.samples, random_seed=context.seed,
                             numpy_random_seed=context.seed, torch_random_seed=context.seed,
                             fewshot_random_seed=context.seed, apply_chat_template=options.apply_chat_template,
                             bootstrap_iters=0)
    return harness_result(output)


def harness_result(output: dict) -> MetricResult:
    """The harness's ``results`` (``{"task": {"acc,none": v, "acc_stderr,none": se}}``) as named Values."""
    result = MetricResult(details={"lm_eval_version": output.get("versions", {}),
                                   "config": {k: v for k, v in output.get("config", {}).items()
                                              if isinstance(v, (int, float, str, bool, type(None)))}})
    for task, figures in output["results"].items():
        n = output.get("n-samples", {}).get(task, {}).get("effective", 0)
        higher = output.get("higher_is_better", {}).get(task, {})
        for key, value in figures.items():
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stderr = figures.get(f"{metric}_stderr,{filter_name}")
            name = f"{task}/{metric}" + (f"/{filter_name}" if filter_name not in ("", "none") else "")
            result.values[name] = Value(float(value), n, stderr if _finite(stderr) else None, higher.get(metric))
    for task, documents in output.get("samples", {}).items():
        result.samples += [{"task": task, "doc_id": d.get("doc_id"), "target": str(d.get("target")),
                            "response": str(d.get("filtered_resps")), **_scores(d)} for d in documents]
    return result


def _scores(document: dict) -> dict:
    return {k: v for k, v in document.items() if isinstance(v, (int, float)) and k != "doc_id"}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
