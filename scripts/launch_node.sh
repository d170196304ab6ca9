#!/usr/bin/env bash
# Start this node's peers of a multi-node run (one peer per local GPU by default).
# The node's place comes from SLURM (SLURM_NODEID, SLURM_NNODES, SLURM_NTASKS_PER_NODE) or torchrun-style
# variables (NODE_RANK, NNODES, LOCAL_WORLD_SIZE). Every node runs the same command with the same config:
#   NODE_RANK=0 NNODES=2 scripts/launch_node.sh --config run.toml     # on the first machine
#   NODE_RANK=1 NNODES=2 scripts/launch_node.sh --config run.toml     # on the second
# Under SLURM: srun --ntasks-per-node=1 scripts/launch_node.sh --config run.toml
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/declora ]; then
    bash scripts/setup_env.sh
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/declora launch-node "$@"
