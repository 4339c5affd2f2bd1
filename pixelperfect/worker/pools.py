"""The worker process's thread pools, created once after any fork and reused by every batch.

Threads are not respawned per task (which would also churn the allocator's per-thread arenas), and a forked child
never touches its parent's pools: they are keyed by process id.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

#: Parallel downloads (+ decode + preprocessing) per worker process: I/O-bound, so more threads than cores.
IO_THREADS = 8
#: Parallel mask uploads per worker process (S3 PUTs are latency-bound).
UPLOAD_THREADS = 16
#: Threads scoring and PNG-encoding finished images (numpy and OpenCV release the GIL for the heavy parts).
POST_THREADS = max(2, min(8, (os.cpu_count() or 2) // 2))
#: The pools' threads run this much nicer than the thread driving the model: when cores are short, the model
#: (the throughput bottleneck, or the thread launching GPU kernels) goes first and the pipeline's own work fills
#: the gaps — it waits at most for the bounded queues to fill, never the other way round. Linux only.
PIPELINE_NICE = 5


@dataclass(frozen=True)
class Pools:
    fetch: ThreadPoolExecutor
    post: ThreadPoolExecutor
    upload: ThreadPoolExecutor


_POOLS: tuple[int, Pools] | None = None
_LOCK = threading.Lock()


def worker_pools() -> Pools:
    """This process's pools (created on first use in it)."""
    global _POOLS
    with _LOCK:
        if _POOLS is None or _POOLS[0] != os.getpid():
            _POOLS = (
                os.getpid(),
                Pools(
                    ThreadPoolExecutor(IO_THREADS, thread_name_prefix="pp-fetch", initializer=_lower_priority),
                    ThreadPoolExecutor(POST_THREADS, thread_name_prefix="pp-post", initializer=_lower_priority),
                    ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="pp-upload", initializer=_lower_priority),
                ),
            )
        return _POOLS[1]


def _lower_priority() -> None:
    """Make the calling pool thread :data:`PIPELINE_NICE` nicer (on Linux a thread has its own nice value)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + PIPELINE_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: the pipeline still works, unprioritised
        pass


def release_when_uploaded(post: Future[tuple[Any, list[Future[None]]]], slots: threading.Semaphore) -> None:
    """Done-callback of a post-processing future returning ``(result, upload futures)``: release one slot once
    every upload finished (at once if post-processing failed, was cancelled or has nothing to upload)."""
    if post.cancelled() or post.exception() is not None or not post.result()[1]:
        slots.release()
        return
    puts = post.result()[1]
    remaining = [len(puts)]
    lock = threading.Lock()

    def one_done(_: Future[None]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                slots.release()

    for put in puts:
        put.add_done_callback(one_done)
