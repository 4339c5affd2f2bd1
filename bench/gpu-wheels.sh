#!/usr/bin/env bash
# The carried wheels for a lent GPU machine (issue 33): what bench/gpu.sh needs there beyond the machine's image
# (bench/gpu-wheels.txt, checked against bench/device-image-packages.txt), downloaded here, where pip reaches the
# registry, as wheels for CPython on Linux x86-64 into a git-ignored folder; then their total size with the working
# tree (a device call carries 64 MiB in all). The device call names the folder in `carry` (bench/RESULTS.md).
#
# Usage: [PP_GPU_PARTS=p6,decode] bash bench/gpu-wheels.sh [--python 3.12] [--dest bench/wheels]
#   --python  the Python the wheels are for: 3.12 for the lent machines (default); 3.11 for the rehearsal here
#             (make gpu-rehearsal), from the same list
#   PP_GPU_PARTS  carry only what these parts need (default: every part listed)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=3.12
DEST=bench/wheels
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PYV=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu-wheels.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
HOST_PY=${HOST_PY:-python3}  # any Python with pip here; it only downloads
mapfile -t REQS < <("$HOST_PY" bench/gpu_carry.py requirements)
[ ${#REQS[@]} -gt 0 ] || { echo "gpu-wheels.sh: nothing to carry" >&2; exit 1; }
# The platforms a manylinux wheel for the lent machine may name (the device README's list); pip matches each exactly.
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
rm -rf "$DEST.part"
mkdir -p "$DEST.part"
echo "# downloading ${#REQS[@]} wheels for CPython $PYV, manylinux x86-64, into $DEST"
"$HOST_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST.part" "${REQS[@]}" 2> >(grep -v 'is ignored: it is neither a file' >&2)
if ! problems=$("$HOST_PY" bench/gpu_carry.py check-wheels "$DEST.part" --python "$PYV"); then
  echo "gpu-wheels.sh: the carried set is not complete:" >&2
  echo "$problems" >&2
  exit 1
fi
rm -rf "$DEST"
mv "$DEST.part" "$DEST"
"$HOST_PY" bench/gpu_carry.py sizes "$DEST"
