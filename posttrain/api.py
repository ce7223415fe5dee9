"""The Python API behind the CLI: ``posttrain.train("configs/sft.yaml", overrides=["max_steps=20"])``."""

from __future__ import annotations

from pathlib import Path

from posttrain.config import apply_overrides, build_config, describe_config, read_config_file
from posttrain.errors import ConfigError


def build_method_config(config: str | Path | dict, overrides: list[str] | None = None):
    """A config file path or dict (+ overrides) -> ``(train_function, typed config)``, dispatched on ``method``."""
    source, data = _read(config, overrides)
    config_class, train_function = _method(data.get("method", "sft"), source)
    return train_function, build_config(config_class, data, source=source)


def describe_method(config: str | Path | dict | None = None, overrides: list[str] | None = None,
                    method: str | None = None) -> str:
    """Every key of a method's config: type, default, help, and the value ``config`` (+ overrides) sets where it
    differs from the default (``posttrain train CONFIG --help``). The method is ``method``, else the config's."""
    source, data = _read(config, overrides) if config is not None else ("config", None)
    config_class, _ = _method(method or (data or {}).get("method", "sft"), "method" if method else source)
    return describe_config(config_class, data, source=source)


def _read(config: str | Path | dict, overrides: list[str] | None) -> tuple[str, dict]:
    source = "config" if isinstance(config, dict) else str(config)
    data = dict(config) if isinstance(config, dict) else read_config_file(config)
    return source, apply_overrides(data, overrides or [], source=f"{source} (overrides)")


def _method(method: str, source: str):
    """``(config class, train function)`` of ``method``."""
    from posttrain.trainers import METHODS

    if method not in METHODS:
        raise ConfigError(f"{source}: unknown method {method!r}; available: {', '.join(METHODS)}")
    return METHODS[method]


def train(config: str | Path | dict, overrides: list[str] | None = None, callbacks=None) -> dict:
    """Train from a config file or dict; returns the evaluation written to ``output_dir/evaluation.json``."""
    train_function, typed = build_method_config(config, overrides)
    from posttrain.engine.distributed import init_from_env, record_failure
    from posttrain.engine.output_dir import check_output_dir

    check_output_dir(typed.output_dir)

    # under torchrun: join the process group before any model loads, so that on CUDA each rank loads onto its own GPU
    init_from_env(typed.distributed.backend, typed.distributed.timeout_s, getattr(typed, "device", "auto"))
    try:
        return train_function(typed, callbacks=callbacks)
    except Exception as exc:
        record_failure(exc)  # under torchrun the other ranks then stop with this rank's message
        raise


def label(config: str | Path | dict, overrides: list[str] | None = None) -> dict:
    """Sample completions and write AI-judged preference pairs (``posttrain.rollout.label``); returns the summary
    written to ``output_dir/evaluation.json``."""
    from posttrain.rollout.label import LabelConfig, label_preferences

    source, data = _read(config, overrides)
    if data.setdefault("method", "label") != "label":
        raise ConfigError(f"{source}: method is {data['method']!r}; `posttrain label` runs method: label configs")
    return label_preferences(build_config(LabelConfig, data, source=source))


def constitution(config: str | Path | dict, overrides: list[str] | None = None) -> dict:
    """The critique -> revise loop of Constitutional AI's supervised stage (``posttrain.rollout.critique_revise``);
    returns the summary written to ``output_dir/evaluation.json`` (``data``: the SFT file)."""
    from posttrain.rollout.critique_revise import ConstitutionConfig, critique_revise

    source, data = _read(config, overrides)
    if data.setdefault("method", "constitution") != "constitution":
        raise ConfigError(f"{source}: method is {data['method']!r}; `posttrain constitution` runs method: "
                          "constitution configs")
    return critique_revise(build_config(ConstitutionConfig, data, source=source))


def evaluate(model="smollm2-135m-instruct", suite="default", seed: int = 0, out: str | Path | None = None,
             **options) -> dict:
    """Evaluate a model spec (or a ``(model, tokenizer)`` pair) on a metric suite; returns the evaluation, also
    written to ``out`` (default ``<model folder>/evaluation.json`` for a folder). See ``posttrain.eval.evaluate``."""
    from posttrain.eval import evaluate as run_suite

    return run_suite(model, suite, seed, out, **options)


def merge(config: str | Path | dict, overrides: list[str] | None = None) -> Path:
    """Merge models or LoRA adapters as a merge config (file or dict: method, models, base, parameters, out) says;
    returns the output folder. See docs/model_ops.md and ``posttrain.models.merging.MergeConfig``."""
    from posttrain.models.merging import merge_models, read_merge_config

    source = "config" if isinstance(config, dict) else str(config)
    return merge_models(read_merge_config(config, overrides), source)


def export(model: str | Path, out: str | Path, gguf: str = "f16", tokenizer_pre: str | None = None) -> Path:
    """Write a llama-architecture model folder (or the embedded model's name) as one GGUF file of type ``gguf``
    (f16, q8_0, ...: ``posttrain.models.gguf_export.FORMATS``) with its tokenizer and chat template."""
    from posttrain.models.gguf_export import export_gguf

    return export_gguf(model, out, gguf, tokenizer_pre)


def upcycle(model: str, out: str | Path, experts: int = 4, top_k: int = 2, seed: int = 0,
            aux_loss_coef: float = 0.01) -> Path:
    """Sparse upcycling: every MLP of a llama-architecture model copied into ``experts`` experts behind a new
    top-``top_k`` router, written as a transformers Mixtral folder. See ``posttrain.models.upcycling``."""
    from posttrain.models.upcycling import upcycle as run

    return run(model, out, experts, top_k, seed, aux_loss_coef)


def quantize(model: str | Path, out: str | Path, format: str = "int8", group_size: int | None = None,
             embeddings: bool = True) -> Path:
    """Quantize a model folder's linear layers and (``embeddings``) its token embedding for inference with torchao
    (int8, int8-dynamic, int4) and write a folder that loads like any model. See ``posttrain.models.quantize``."""
    from posttrain.models.quantize import quantize_model

    return quantize_model(model, out, format, group_size, embeddings)


def push(model_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a model folder (a run's ``final/``: weights or adapter, tokenizer, model card) to the Hub repository
    ``repo_id``, creating it if needed; returns the commit's URL."""
    from huggingface_hub import HfApi

    folder = Path(model_dir)
    if (folder / "log_history.jsonl").exists():
        raise ConfigError(f"{folder} is a run folder: push its final/ ({folder / 'final'})")
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.gguf")]
    if not folder.is_dir() or not weights:
        raise ConfigError(f"{folder}: expected a model folder holding safetensors weights (a run's final/)")
    if not (folder / "README.md").is_file():
        raise ConfigError(f"{folder}: no README.md model card; folders posttrain writes have one")
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                               commit_message=f"Upload {folder.name} with posttrain")
    return str(getattr(commit, "commit_url", commit))

