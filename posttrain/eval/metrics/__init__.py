"""The metric table: name -> (options dataclass, function). A suite entry names a metric and gives its options; the
harness builds the options (typed, checked: ``posttrain.config.build_config``) and calls
``function(context, options) -> MetricResult``.

To add a metric: write its options dataclass and a function returning a ``MetricResult``, and add one line here.
"""

from posttrain.eval.metrics.answers import (
    ProbeOptions,
    RewardOptions,
    TaskAccuracyOptions,
    VerbosityOptions,
    probes,
    reward,
    task_accuracy,
    verbosity,
)
from posttrain.eval.metrics.constitution import ConstitutionOptions, constitution
from posttrain.eval.metrics.lm_eval import LmEvalOptions, lm_eval
from posttrain.eval.metrics.judges import JudgeAgreementOptions, WinRateOptions, judge_agreement, win_rate
from posttrain.eval.metrics.safety import SafetyOptions, safety
from posttrain.eval.metrics.likelihood import (
    KLOptions,
    PerplexityOptions,
    PreferenceOptions,
    kl,
    perplexity,
    preference_accuracy,
)

METRICS = {
    "perplexity": (PerplexityOptions, perplexity),
    "verbosity": (VerbosityOptions, verbosity),
    "task_accuracy": (TaskAccuracyOptions, task_accuracy),
    "reward": (RewardOptions, reward),
    "kl": (KLOptions, kl),
    "win_rate": (WinRateOptions, win_rate),
    "judge_agreement": (JudgeAgreementOptions, judge_agreement),
    "preference_accuracy": (PreferenceOptions, preference_accuracy),
    "probes": (ProbeOptions, probes),
    "lm_eval": (LmEvalOptions, lm_eval),
    "safety": (SafetyOptions, safety),
    "constitution": (ConstitutionOptions, constitution),
}

__all__ = ["METRICS"]
