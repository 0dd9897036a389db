#!/usr/bin/env bash
# Set up autointerp and run the main job on the embedded default, offline, on CPU:
# sample MLP neurons of Gemma-3-270M (layer 6) over Wikipedia summaries, explain a handful of features with
# the embedded Qwen2.5-Coder-1.5B, simulate and score them, and write a report.
#   bash scripts/quickstart.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN_DIR="${1:-${AUTOINTERP_RUNS:-$HOME/autointerp-runs}/quickstart}"
.venv/bin/autointerp explain --model gemma3-270m --hook L6/mlp_neurons --features 0-4 --tokens 50000 \
  --run-dir "$RUN_DIR"
.venv/bin/autointerp report "$RUN_DIR"
echo "run directory: $RUN_DIR  (open $RUN_DIR/report.html in a browser)"
