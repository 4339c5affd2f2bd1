"""Worker death: SIGKILL the pool process mid-batch three times, then the whole worker once (restarted as a
supervisor would); every image ends done exactly once and every mask object is intact."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.faults.conftest import FaultBed
from tests.faults.runs import (
    audit_run,
    kill_group,
    log_count,
    pool_children,
    submit_run,
    wait_drained,
    wait_for_log,
)
from tests.faults.services import FaultPolicy, FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECEIVED = r"segment_batch\[[0-9a-f-]+\] received"
LOST = r"WorkerLostError"
SUCCEEDED = r"segment_batch\[[0-9a-f-]+\] succeeded"


def test_sigkill_mid_batch_loses_nothing_and_duplicates_nothing(
    bed: FaultBed,
) -> None:
    t0 = time.monotonic()
    rng = random.Random(1)
    archive = bed.archive(n=16)
    stack = bed.stack()
    worker = bed.start_worker(stack.env())
    submit_run(stack, archive, "kill", batch_size=2, variants=("raw", "clahe"))

    # three pool processes killed while they hold a batch; the worker's main process forks a replacement
    child_kills, seen, done_at_kill = 0, 0, 0
    while child_kills < 3:
        wait_for_log(worker.log, RECEIVED, count=seen + 1, timeout=60)
        seen = log_count(worker.log, RECEIVED)
        # A fresh pool process first loads the model (~1.5-2 s here), then segments, uploads and commits; once
        # warm, a batch takes ~0.1 s. Kill anywhere in the batch, in either case: a delay drawn over a warm
        # process's whole batch would mostly fall between batches and drain the queue before three kills.
        warm = log_count(worker.log, SUCCEEDED) > done_at_kill
        time.sleep(rng.uniform(0.0, 0.08 if warm else 2.0))
        lost_before = log_count(worker.log, LOST)
        done_at_kill = log_count(worker.log, SUCCEEDED)
        for pid in pool_children(worker.proc.pid):
            os.kill(pid, signal.SIGKILL)
        try:
            wait_for_log(worker.log, LOST, count=lost_before + 1, timeout=5)
            child_kills += 1
        except AssertionError:
            pass  # the kill fell between two batches: not a mid-batch kill, try again
    assert worker.proc.poll() is None, "the worker's main process must survive its pool process dying"

    # the whole worker dies mid-batch (main process included); a supervisor starts a new one
    wait_for_log(worker.log, RECEIVED, count=seen + 1, timeout=60)
    time.sleep(0.05)
    kill_group(worker.proc)
    worker.proc.wait(10)
    _, unacked = bed.redis.backlog()
    assert unacked >= 1, "the batch of the dead worker is held unacknowledged by Redis"
    second = bed.start_worker(stack.env(), hostname="w2@%h")
    status = wait_drained(bed.pg_url, "kill", [second], timeout=90)

    audit = audit_run(stack, bed.s3, "kill", n_variants=2)
    assert status == {"queued": 0, "done": 16, "failed": 0}, status
    assert audit.lost == 0 and audit.duplicates == 0, audit
    assert audit.missing_objects == [] and audit.bad_masks == [], audit
    assert audit.expected_segments > 0 and audit.segments == audit.expected_segments
    assert bed.redis.backlog() == (0, 0)
    bed.table.append(
        (
            "worker death (3 pool SIGKILL + 1 worker SIGKILL)",
            16,
            "4 SIGKILL mid-batch",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )


def test_an_image_that_kills_its_worker_is_isolated_then_failed(
    bed: FaultBed,
    fault_proxy: FaultProxy,
) -> None:
    """A file that crashes the pool process whenever it is read (as a decoder bug would) must not crash-loop the
    fleet: after two lost pool processes its batch is split into single images, the others finish, and the
    lone culprit is failed with ``worker_lost`` after two more."""
    t0 = time.monotonic()
    archive = bed.archive(n=6)
    poison = archive.images[1]
    stack = bed.stack()
    worker = bed.start_worker(stack.env(s3_endpoint_url=fault_proxy.endpoint))
    kills: list[int] = []

    def crash_on_poison(method: str, path: str) -> None:
        if method == "GET" and path.split("?")[0].endswith(poison):
            for pid in pool_children(worker.proc.pid):
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)

    fault_proxy.policy = FaultPolicy(on_request=crash_on_poison)
    submit_run(stack, archive, "crashy", batch_size=3)
    status = wait_drained(bed.pg_url, "crashy", [worker], timeout=120)

    audit = audit_run(stack, bed.s3, "crashy")
    assert status == {"queued": 0, "done": 5, "failed": 1}, status
    assert audit.failures[poison.split("archive/images/", 1)[1]][0] == "worker_lost", audit.failures
    assert log_count(worker.log, r"splitting it into 3 single-image tasks") == 1
    assert len(kills) == 4 and log_count(worker.log, r"raised error: WorkerLostError") == 4  # 2 as a batch, 2 alone
    assert worker.proc.poll() is None
    assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == [] and audit.bad_masks == []
    time.sleep(0.3)
    assert bed.redis.backlog() == (0, 0)
    bed.table.append(
        (
            "poison file that kills its worker",
            6,
            "4 pool deaths; batch split, 1 image failed worker_lost",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )
