"""The evaluation harness: metrics -> evaluation.json, run comparison, plots (docs/eval.md).

    from posttrain.eval import evaluate, read_evaluation, compare, plot_run
    result = evaluate("runs/dpo/final", suite="default")          # writes runs/dpo/final/evaluation.json
    table = compare([read_evaluation("baseline.json"), read_evaluation("runs/dpo/final")])
"""

from posttrain.eval.compare import compare
from posttrain.eval.evalfile import FORMAT, FORMAT_VERSION, read_evaluation
from posttrain.eval.harness import evaluate
from posttrain.eval.metrics import METRICS
from posttrain.eval.plot import plot_run
from posttrain.eval.suite import BUILTIN_SUITES, load_suite

__all__ = ["BUILTIN_SUITES", "FORMAT", "FORMAT_VERSION", "METRICS", "compare", "evaluate", "load_suite", "plot_run",
           "read_evaluation"]
