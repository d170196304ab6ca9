#!/usr/bin/env bash
# Create .venv (if missing) and install declora with the given extras.
# torch is pinned and installed FIRST: an unpinned or newer torch pulls gigabytes of CUDA wheels.
# Usage: scripts/setup_env.sh [extras]   e.g. scripts/setup_env.sh dev   or   scripts/setup_env.sh demo
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
TORCH_VERSION="${DECLORA_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
fi
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install -q -e ".[$extras]"
else
    .venv/bin/python -m pip install -q -e .
fi
