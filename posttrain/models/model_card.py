"""Model cards: the README.md of every folder posttrain writes, in the Hugging Face Hub's format (YAML front matter
with base_model, license, library_name and tags, then markdown), so a folder can be uploaded as it is."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

from posttrain.models.specs import BUILTIN_SPECS

LIBRARIES = ("posttrain", "torch", "transformers", "peft", "safetensors")


def model_card(title: str, summary: str, *, base_model: str | None, tags: list[str],
               sections: dict[str, str] | None = None) -> str:
    """README.md text: front matter (the base model as the Hub names it, its license), ``# title``, ``summary``,
    one ``## heading`` per section, and the library versions that made it."""
    base_id, license = base_model_identity(base_model)
    front = ["---", "library_name: transformers", f"tags: {json.dumps(['posttrain', *tags])}"]
    if base_id:
        front.append(f"base_model: {base_id}")
    if license:
        front.append(f"license: {license}")
    body = [*front, "---", "", f"# {title}", "", summary.strip(), ""]
    for heading, text in {**(sections or {}), "Software": library_versions()}.items():
        body += [f"## {heading}", "", text.strip(), ""]
    return "\n".join(body)


def base_model_identity(spec: str | None) -> tuple[str | None, str | None]:
    """``(hub id or path, license)`` of a model spec: a built-in's own, or what a local folder's card says."""
    if spec is None or spec == "tiny":
        return None, None
    if spec in BUILTIN_SPECS:
        return BUILTIN_SPECS[spec].hub_id, BUILTIN_SPECS[spec].license
    card = Path(spec) / "README.md"
    if card.is_file():
        front = card.read_text(errors="replace").split("---")
        fields = dict(re.findall(r"^(base_model|license):\s*(\S+)\s*$", front[1], re.M)) if len(front) > 2 else {}
        return fields.get("base_model", spec), fields.get("license")
    return spec, None  # a hub id


def library_versions() -> str:
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"- {name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(versions)


def evaluation_table(metrics: dict, baseline: dict | None) -> str:
    """A markdown table of evaluation.json's figures: metric, before training (step 0), after, held-out items."""
    rows = ["| metric | before | after | items |", "|---|---|---|---|"]
    for name, entry in metrics.items():
        value = entry.get("value") if isinstance(entry, dict) else entry
        items = next((v for k, v in entry.items() if k.startswith("n_")), "") if isinstance(entry, dict) else ""
        before = (baseline or {}).get(name)
        rows.append(f"| {name} | {_number(before)} | {_number(value)} | {items} |")
    return "\n".join(rows)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)
