#!/usr/bin/env bash
# P6, the GPU benchmark (issue 8): one prepared run, under 8 minutes on one CUDA GPU.
#   ViT-B with random seeded weights (no checkpoint needed for speed): encoder images/s and peak GPU memory for
#   chunks of 1/8/32 in fp32 and bf16, end-to-end images/s from images pre-staged on local disk (1 and 2 processes
#   on the card), torch.compile's cold start, then the bf16-vs-fp32 mask agreement test (mean IoU >= 0.98).
# P11g (issue 17), opt-in so that the default run fits one 480 s device call: JPEG / JPEG 2000 DICOM decoding
#   on the GPU with nvImageCodec against the CPU decoders (about 2 minutes). The device machine has no network: the nvImageCodec wheels come from a local folder,
#   $NVIMGCODEC_WHEELS (default bench/wheels, git-ignored; fill it on a machine with network with
#   pip download nvidia-nvimgcodec-cu13 nvidia-nvjpeg2k-cu13 'nvidia-nvjpeg>=13,<14' --no-deps -d bench/wheels,
#   33 MB); without them that part is skipped. PP_GPU_PARTS=decode runs only it, =decode,p6 both (~12 min), the
#   default p6 only P6.
# Usage: bash bench/gpu.sh   (or: make bench-gpu). Results also go to $OUT/gpu.txt (or bench/out/gpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PARTS=${PP_GPU_PARTS:-p6}
: > "$OUTDIR/gpu.txt"
if [[ ",$PARTS," == *",decode,"* ]]; then
  WHEELS=${NVIMGCODEC_WHEELS:-bench/wheels}
  if ! "$PY" -c "import nvidia.nvimgcodec" 2>/dev/null; then
    if compgen -G "$WHEELS/nvidia_nvimgcodec_cu13-*.whl" >/dev/null; then
      "$PY" -m pip install --no-index --no-deps --quiet "$WHEELS"/*.whl \
        || echo "# P11g: the nvImageCodec wheels in $WHEELS did not install" | tee -a "$OUTDIR/gpu.txt"
    else
      echo "# P11g: no nvImageCodec wheel in $WHEELS: GPU decoding not measured" | tee -a "$OUTDIR/gpu.txt"
    fi
  fi
  if "$PY" -c "import nvidia.nvimgcodec" 2>/dev/null; then
    timeout 180 "$PY" bench/gpu_decode.py 2>&1 | tee -a "$OUTDIR/gpu.txt" || true
    timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/pipeline/decode/test_gpu.py 2>&1 | tee -a "$OUTDIR/gpu.txt" || true
  fi
fi
[[ ",$PARTS," == *",p6,"* ]] || exit 0
# 7 minutes for the benchmark (it skips its optional parts when short of time), 1 minute for the test
timeout 420 "$PY" bench/gpu_bench.py --budget 380 --compile 2>&1 | tee -a "$OUTDIR/gpu.txt"
timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/pipeline/model/test_sam.py 2>&1 | tee -a "$OUTDIR/gpu.txt"
