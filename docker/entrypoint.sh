#!/bin/sh
# Entrypoint of the PixelPerfect image; the worker, flower, migrate and producer services all use it.
#
#   (no arguments) | worker [ARGS...] | --OPTION ...
#       start a Celery worker on queue `gpu` named celery@$HOSTNAME (the name the image's HEALTHCHECK pings);
#       ARGS go to `pixelperfect worker`
#   anything else (pixelperfect submit ..., celery ... flower, sh)
#       exec'd as given
#
# Before a worker starts, the entrypoint checks that a local checkpoint is readable (an s3:// checkpoint is read
# by the app itself) and claims a GPU that no other worker on this host holds (see claim_gpu).
set -eu

log() { printf 'entrypoint: %s\n' "$*" >&2; }

check_checkpoint() {
    checkpoint="${PIXELPERFECT_CHECKPOINT:-}"
    case "$checkpoint" in
        "" | s3://*) return 0 ;;
    esac
    if [ ! -r "$checkpoint" ]; then
        log "PIXELPERFECT_CHECKPOINT=$checkpoint is not a readable file."
        log "Put the weights in the host's MODELS_DIR (mounted read-only at /models, readable by uid 10001)"
        log "or point PIXELPERFECT_CHECKPOINT at an s3:// object; see docs/deploy.md."
        exit 66  # EX_NOINPUT
    fi
}

# Docker hands every replica of a service the same GPUs (count: N means GPUs 0..N-1 in each replica), so
# `--scale` alone would stack all workers of a host on one GPU. Workers of one host therefore share a lock
# directory (a volume, local to the host) and each takes an flock on the UUID of one GPU it sees. The lock is
# file descriptor 9, which the worker inherits through exec: it is released when the worker exits, however it
# exits, and the next worker to start can take that GPU.
claim_gpu() {
    if [ "${GPU_CLAIM:-exclusive}" != exclusive ]; then
        log "GPU_CLAIM=${GPU_CLAIM}: not claiming a GPU (workers may share one)"
        return 0
    fi
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        log "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES given: not claiming a GPU"
        return 0
    fi
    command -v nvidia-smi >/dev/null 2>&1 || return 0   # no GPU runtime in this container: nothing to claim
    uuids=$(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>/dev/null) || return 0
    claims="${GPU_CLAIMS_DIR:-/gpu-claims}"
    mkdir -p "$claims"
    seen=0
    for uuid in $uuids; do
        seen=$((seen + 1))
        exec 9>"$claims/$uuid.lock"
        if flock --nonblock 9; then
            CUDA_VISIBLE_DEVICES="$uuid"
            export CUDA_VISIBLE_DEVICES
            log "claimed GPU $uuid (CUDA_VISIBLE_DEVICES=$uuid)"
            return 0
        fi
        exec 9>&-
    done
    [ "$seen" -gt 0 ] || return 0
    log "all $seen GPU(s) this container sees are held by other workers on this host."
    log "The worker service reserves one GPU (GPU 0) per replica: to run one worker per GPU use the"
    log "multigpu profile (docs/deploy.md), or set GPU_CLAIM=shared to let workers share a GPU."
    exit 75  # EX_TEMPFAIL
}

start_worker() {
    check_checkpoint
    claim_gpu
    node="celery@${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}"
    exec pixelperfect worker --hostname "$node" --concurrency "${WORKER_CONCURRENCY:-1}" --queues gpu "$@"
}

if [ "$#" -eq 0 ]; then
    start_worker
fi
case "$1" in
    worker) shift; start_worker "$@" ;;
    -*) start_worker "$@" ;;
    *) exec "$@" ;;
esac
