#!/usr/bin/env bash
# make gpu-rehearsal (issue 33): the lent GPU machine's run, rehearsed on this CPU, so that a loan is not spent on
# an ImportError. As on the lent machine:
#   * a bare interpreter with only the image's packages that the GPU path uses (bench/gpu-rehearsal.txt: torch from
#     this machine's disk, numpy, OpenCV, …; each checked to be in bench/device-image-packages.txt), in a venv
#     cached under ~/.cache/pixelperfect, keyed by a hash of that list and the Python version;
#   * the carried wheels, from the same list as the lent machine's (bench/gpu-wheels.txt), fetched for this Python
#     by bench/gpu-wheels.sh (cached the same way) and put where `carry` puts them, bench/wheels;
#   * a copy of what a device call sends (tracked files and untracked ones git does not ignore), in which
#     bench/gpu.sh --smoke installs the wheels with pip --target and runs every part's --smoke end to end.
# It fails if any part fails (a missing package: ModuleNotFoundError), if the wheels were not installed the
# carried way, or if the parts' lines are not there. Python 3.12, the lent machine's, has no torch on this disk:
# the rehearsal runs Python 3.11 with the cp311 builds of the same wheels.
#
# Usage: bash bench/gpu-rehearsal.sh   (make gpu-rehearsal). Results: bench/out/rehearsal/.
#   PP_REHEARSAL_PYTHON (default python3.11), PP_REHEARSAL_CACHE (default ~/.cache/pixelperfect),
#   PP_REHEARSAL_BUDGET (seconds for gpu.sh --smoke, default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
T0=$(date +%s)
BASE_PY=${PP_REHEARSAL_PYTHON:-python3.11}
CACHE=${PP_REHEARSAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixelperfect}
BUDGET=${PP_REHEARSAL_BUDGET:-600}
PYV=$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
hash_of() { { echo "$PYV"; cat "$@"; } | sha256sum | cut -c1-16; }
VENV=$CACHE/gpu-rehearsal-venv-$(hash_of bench/gpu-rehearsal.txt)
WHEELS=$CACHE/gpu-rehearsal-wheels-$(hash_of bench/gpu-wheels.txt)
mkdir -p "$CACHE"
exec 9>"$CACHE/gpu-rehearsal.lock"
flock 9  # two rehearsals at once would build the same venv twice

if [ -f "$VENV/.complete" ]; then
  venv_note="cached"
else
  echo "# gpu-rehearsal: building $VENV (Python $PYV; torch from this machine's disk: a few minutes, once per list)"
  rm -rf "$CACHE"/gpu-rehearsal-venv-*  # one at a time: each is ~5.5 GB
  "$BASE_PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet -r bench/gpu-rehearsal.txt 2> >(grep -v 'is ignored: it is neither' >&2)
  # Nothing beyond the image: a package the lent machine lacks would hide a missing wheel here.
  "$VENV/bin/python" - <<'PY'
import importlib.metadata, sys
sys.path.insert(0, "bench")
import gpu_carry

extra = sorted({gpu_carry.normalize(d.metadata["Name"]) for d in importlib.metadata.distributions()}
               - gpu_carry.image_packages())
if extra:
    sys.exit(f"gpu-rehearsal: the venv holds packages the lent machine's image lacks: {', '.join(extra)}")
PY
  touch "$VENV/.complete"
  venv_note="built"
fi
T_VENV=$(date +%s)

if [ -f "$WHEELS/.complete" ]; then
  wheels_note="cached"
else
  rm -rf "$CACHE"/gpu-rehearsal-wheels-*
  env -u PP_GPU_PARTS HOST_PY="$BASE_PY" bash bench/gpu-wheels.sh --python "$PYV" --dest "$WHEELS"
  touch "$WHEELS/.complete"
  wheels_note="fetched"
fi
T_WHEELS=$(date +%s)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pp-gpu-rehearsal.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tree" "$WORK/out"
# What a device call sends: tracked files (as they are now) and untracked ones git does not ignore.
git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$WORK/tree" -xf -
mkdir -p "$WORK/tree/bench/wheels"
cp "$WHEELS"/*.whl "$WORK/tree/bench/wheels/"  # what `carry: ["bench/wheels"]` puts there
set +e
(cd "$WORK/tree" && env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$HOME" LANG=C.UTF-8 TMPDIR="${TMPDIR:-/tmp}" \
  ${OPENBLAS_CORETYPE:+OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE} ${OPENBLAS_L2_SIZE:+OPENBLAS_L2_SIZE=$OPENBLAS_L2_SIZE} \
  PY="$VENV/bin/python" PP_GPU_SITE="$WORK/site" OUT="$WORK/out" bash bench/gpu.sh --smoke --budget "$BUDGET")
rc=$?
set -e
T_RUN=$(date +%s)
rm -rf bench/out/rehearsal
mkdir -p bench/out/rehearsal
cp "$WORK"/out/* bench/out/rehearsal/ 2>/dev/null || true

LOG=$WORK/out/gpu.txt
fail() { echo "gpu-rehearsal FAILED: $*" >&2; exit 1; }
[ "$rc" -eq 0 ] || fail "bench/gpu.sh --smoke exited $rc (its log: bench/out/rehearsal/gpu.txt)"
grep -q '^# carried: .* wheels from bench/wheels installed into' "$LOG" \
  || fail "the carried wheels were not installed with pip --target"
for line in '^P6 encoder images/s .* fp32 ' '^P6 encoder images/s .* bf16 ' '^P6 end-to-end images/s .* 1 process' \
    '^P6 end-to-end images/s .* 2 process' '^P11g jpeg_baseline .* device decode' '^P11g j2k_lossy .* decode_image'; do
  grep -q -e "$line" "$LOG" || fail "no line matching '$line' in bench/out/rehearsal/gpu.txt"
done
echo "# gpu-rehearsal passed (Python $PYV standing in for the lent machine's 3.12): venv $venv_note in" \
  "$((T_VENV - T0)) s, wheels $wheels_note in $((T_WHEELS - T_VENV)) s, gpu.sh --smoke $((T_RUN - T_WHEELS)) s;" \
  "$((T_RUN - T0)) s in all"
