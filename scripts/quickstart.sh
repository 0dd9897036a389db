#!/usr/bin/env bash
# Set up autointerp and run the main job on the embedded default, offline, on CPU: sample 20,000 tokens of
# Wikipedia summaries through Gemma-3-270M, encode layer 6 with the embedded SAE, explain 5 of its latents
# chosen by a documented rule (seeded random among the latents that fired on at least 20 of the sampled
# tokens; not a hand-picked list): the embedded Qwen2.5-Coder-1.5B names what each latent's marked tokens share
# (--explainer-kind evidence), the no-LLM token list is the other candidate (tokens), and the held-out 'valid'
# split picks one; simulate and score them beside a shuffled-label baseline (the floor) and the token-list
# yardstick (the bar), print a table with both paired comparisons and how much the simulations read the
# label, and write an HTML report. --no-calibrate: the correlation scores without the calibrated r_squared,
# which would double the simulator's requests. Time on 2 cores: see README.md.
#   bash scripts/quickstart.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN_DIR="${1:-${AUTOINTERP_RUNS:-$HOME/autointerp-runs}/quickstart}"
.venv/bin/autointerp explain --sae gemma3-270m/L6 --features random:5,min=20,seed=0 --tokens 20000 \
  --window 32 --explainer-kind evidence,tokens --n-top-examples 8 --max-records-per-split 3 --no-calibrate \
  --run-dir "$RUN_DIR"
.venv/bin/autointerp report "$RUN_DIR"
echo "run directory: $RUN_DIR  (open $RUN_DIR/report.html in a browser)"
