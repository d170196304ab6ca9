#!/usr/bin/env bash
# Set up .venv with the dev extras (torch pinned first) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" tests/unit
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
