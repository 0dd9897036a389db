#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --formats
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export AUTOINTERP_CACHE="${AUTOINTERP_CACHE:-$HOME/.cache/autointerp}"
.venv/bin/ruff check autointerp tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
