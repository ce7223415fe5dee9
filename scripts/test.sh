#!/usr/bin/env bash
# README command 2: set up what is missing, then run the whole test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,gym,trackers,lm-eval,merge,quantize,benchmarks
exec .venv/bin/python -m pytest -q "$@"
