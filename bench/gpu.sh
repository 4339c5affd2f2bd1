#!/usr/bin/env bash
# The GPU benchmark as one plan for a loan (issues 8, 17, 33): the parts of bench/gpu_parts.py, the most valuable
# first, within a time budget, on one CUDA GPU:
#   p6      P6, the number this project exists for: ViT-B encoder images/s and peak memory (fp32, bf16, chunks
#           1/8/32), end-to-end images/s (1 and 2 processes), torch.compile's cold start; then the bf16-vs-fp32
#           mask test (bench/gpu_bench.py, tests/pipeline/model/test_sam.py -m gpu)
#   sam2    SAM 2.1 (bench/gpu_sam2.py, when it exists)
#   sam3    SAM 3 concept prompts (bench/gpu_sam3.py: P16g images/s at batch 1 and 8, bf16; then P3c on the GPU)
#   decode  P11g, JPEG / JPEG 2000 DICOM decoding with nvImageCodec against the CPU (bench/gpu_decode.py)
# A part that does not fit in what is left of the budget is skipped, saying so. Each part's lines go to
# $OUT/<part>.txt and everything to $OUT/gpu.txt as soon as printed ($OUT unset: bench/out), so a device call cut
# off at its limit still returns what was measured. How to call it through the device tool: bench/RESULTS.md.
#
# The lent machine has its own image (bench/device-image-packages.txt) and no network: when the project's needs
# beyond it are not installed, the wheels carried in $PP_GPU_WHEELS (default bench/wheels, made by
# bench/gpu-wheels.sh) are installed with pip --target into $PP_GPU_SITE (default /tmp/site), and the parts run
# with PYTHONPATH=$PP_GPU_SITE:$PWD. make gpu-rehearsal runs this same script that way on this CPU (--smoke).
#
# Usage: [PP_GPU_PARTS=p6,sam2,sam3,decode] bash bench/gpu.sh [--budget SECONDS] [--smoke]   (make bench-gpu)
#   --budget  seconds for the whole plan, this script's set-up included (default 480)
#   --smoke   each part's --smoke on a CPU: the plumbing, not the numbers
#   PY        the interpreter (default .venv/bin/python if there, else python3: the image's on a lent machine)
set -uo pipefail
STARTED=$(date +%s)
cd "$(dirname "$0")/.."
BUDGET=480
SMOKE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET=$2; shift 2 ;;
    --budget=*) BUDGET=${1#--budget=}; shift ;;
    --smoke) SMOKE=(--smoke); shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/gpu.txt
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=${PP_GPU_WHEELS:-bench/wheels}
SITE=${PP_GPU_SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
say "# gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): parts ${PP_GPU_PARTS:-all}, budget ${BUDGET} s, ${SMOKE[*]:-on the GPU}," \
  "$("$PY" -c 'import platform; print("Python", platform.python_version())' 2>&1) ($PY), $(nproc) CPUs"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/# GPU: /' | tee -a "$LOG"
else
  say "# GPU: no nvidia-smi here"
fi

# The project's needs beyond the machine's image: installed (a development venv), else carried.
if ! lacking=$("$PY" bench/gpu_carry.py missing 2>&1); then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    t0=$(date +%s) PIPLOG=$(mktemp)
    if "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl > "$PIPLOG" 2>&1; then
      # nvImageCodec's wheel ships nvidia/__init__.py: in $SITE it would hide the image's nvidia.* packages (CUDA
      # libraries) behind a regular package; without it, nvidia stays one namespace across both folders.
      rm -f "$SITE/nvidia/__init__.py"
      export PYTHONPATH="$SITE:$PWD"
      say "# carried: $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS installed into $SITE in $(( $(date +%s) - t0 )) s"
    else
      say "# carried: pip could not install the wheels in $WHEELS (for another Python?):"
      grep -v "is ignored: it is neither" "$PIPLOG" | tail -5 | sed 's/^/#   /' | tee -a "$LOG"
    fi
    rm -f "$PIPLOG"
  else
    say "# carried: none in $WHEELS, and this Python lacks: $(echo "$lacking" | tr '\n' ' ')"
    say "#   (on a machine with network: bash bench/gpu-wheels.sh, then carry bench/wheels)"
  fi
fi
"$PY" bench/gpu_parts.py --budget "$BUDGET" --started "$STARTED" --out "$OUTDIR" "${SMOKE[@]}"
