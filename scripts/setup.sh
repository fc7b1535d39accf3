#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the right torch build and mnist-cnn.
#
# torch is installed before the package, so pip keeps it: on a machine without an
# NVIDIA GPU that is the CPU build (never a multi-GB CUDA download); with a GPU it is
# PyPI's default CUDA build. Override with TORCH_SPEC / TORCH_INDEX, e.g.
#   TORCH_INDEX=https://download.pytorch.org/whl/cu128 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-dev}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  spec=${TORCH_SPEC:-torch==2.13.0}
  if [ -n "${TORCH_INDEX:-}" ]; then
    pip install "$spec" --index-url "$TORCH_INDEX"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    pip install "$spec"  # PyPI's Linux wheel is the CUDA build
  else
    # The CPU-only index; a local wheel (pip's find-links) is used when that index is unreachable.
    pip install "$spec" --extra-index-url https://download.pytorch.org/whl/cpu --retries 0 --timeout 10
  fi
fi
pip install -e ".[$EXTRAS]"
