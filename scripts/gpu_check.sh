#!/usr/bin/env bash
# The GPU check of issue 12, as ONE prepared run on a GPU machine (at most 8 minutes): the CUDA-marked tests, then
# benchmarks/bench_gpu.py (1B LLaMA from a config) within what time is left. Everything it writes goes to $OUT
# (default /tmp/gpu_check): nvidia-smi.txt, tests.log, bench.log, bench_gpu.json.
#
# That machine has torch, transformers and peft but no pyzmq and no bitsandbytes, and reaches no package index:
# carry their wheels in $WHEELS (default .whl, a folder .git/info/exclude ignores). Fetch them here with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl pyzmq "bitsandbytes>=0.45"
# (2026-11-30: pyzmq 27.3.0, 0.9 MB; bitsandbytes 0.50.2, 43 MB, with CUDA 13 kernels; it needs only torch, numpy
# and packaging, which that machine has. The working tree that travels must stay under 64 MiB with them.)
# Without bitsandbytes the 4-bit stages and test are skipped, and the rest runs. Usage:
#   bash scripts/gpu_check.sh [TOTAL_SECONDS]      # default 480
set -uo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-480}
OUT=${OUT:-/tmp/gpu_check}
WHEELS=${WHEELS:-.whl}
START=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}

export PYTHONPATH=$PWD
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || { echo "gpu_check: could not install the wheels in $WHEELS"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
fi
"$PY" -c "import zmq" 2>/dev/null || { echo "gpu_check: no pyzmq: carry its wheel in $WHEELS (see the top of this script)"; exit 1; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; head -15 "$OUT/nvidia-smi.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# 1. The CUDA tests: every test marked gpu in the files that have them (at most 150 s).
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu -o addopts="-ra" \
    tests/integration/test_gpu.py tests/unit/test_codecs.py 2>&1 | tee "$OUT/tests.log"
echo "gpu_check: tests exit ${PIPESTATUS[0]}, $(left) s left"

# 2. The benchmark in what is left, less a margin for its last stage and the write-out.
BUDGET=$(( $(left) - 45 ))
if [ "$BUDGET" -gt 30 ]; then
    timeout $(( BUDGET + 35 )) "$PY" benchmarks/bench_gpu.py --budget-s "$BUDGET" --shared 8,64,32 \
        --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench.log"
    echo "gpu_check: bench exit ${PIPESTATUS[0]}"
else
    echo "gpu_check: no time left for the benchmark"
fi
echo "gpu_check: done in $(( $(date +%s) - START )) s; results in $OUT"
