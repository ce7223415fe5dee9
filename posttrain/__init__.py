"""posttrain: post-training for language models (SFT, preference optimization, RL), readable and measured."""

from posttrain.version import __version__  # noqa: F401  (re-exported: the version lives in posttrain/version.py)


def __getattr__(name):  # keep `import posttrain` light: torch and transformers load on first use
    if name in ("train", "build_method_config", "merge", "export", "upcycle", "quantize"):
        from posttrain import api

        return getattr(api, name)
    if name in ("load_model", "save_model", "apply_lora"):
        from posttrain import models

        return getattr(models, name)
    if name == "generate":
        from posttrain.rollout.generate import generate

        return generate
    raise AttributeError(f"module 'posttrain' has no attribute {name!r}")
