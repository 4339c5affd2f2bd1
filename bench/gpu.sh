#!/usr/bin/env bash
# P6, the GPU benchmark (issue 8): one prepared run, under 8 minutes on one CUDA GPU.
#   ViT-B with random seeded weights (no checkpoint needed for speed): encoder images/s and peak GPU memory for
#   chunks of 1/8/32 in fp32 and bf16, end-to-end images/s from images pre-staged on local disk (1 and 2 processes
#   on the card), torch.compile's cold start, then the bf16-vs-fp32 mask agreement test (mean IoU >= 0.98).
# Usage: bash bench/gpu.sh   (or: make bench-gpu). Results also go to $OUT/gpu.txt (or bench/out/gpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 7 minutes for the benchmark (it skips its optional parts when short of time), 1 minute for the test
timeout 420 "$PY" bench/gpu_bench.py --budget 380 --compile 2>&1 | tee "$OUTDIR/gpu.txt"
timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/speed/test_segmenter.py 2>&1 | tee -a "$OUTDIR/gpu.txt"
