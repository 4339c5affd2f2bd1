"""Graceful shutdown: SIGTERM (sent to the whole process group, as systemd does) gives the in-flight batch the
soft shutdown timeout. A batch that finishes in time is acknowledged; one that does not is cancelled and its
message goes back to the queue. Either way the worker exits within the timeout and nothing is lost."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import FaultBed
from tests.faults.runs import audit_run, counts, kill_group, submit_run, wait_drained
from tests.faults.services import FaultPolicy, FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOFT_S = 3.0


def slow_puts(stall_s: float) -> FaultPolicy:
    """Every mask upload stalls ``stall_s``: a batch that is reliably in flight for that long."""
    return FaultPolicy(rate=1.0, kinds=("stall",), stall_s=stall_s, match=lambda m, p: m == "PUT")


def sigterm_when_uploading(proxy: FaultProxy, worker, timeout: float = 60) -> float:  # type: ignore[no-untyped-def]
    """Wait until the worker's batch is uploading (a stalled PUT), SIGTERM its process group, return the seconds
    it took to exit."""
    before = proxy.counts["stall"]
    deadline = time.monotonic() + timeout
    while proxy.counts["stall"] == before:
        assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
        time.sleep(0.02)
    t = time.monotonic()
    kill_group(worker.proc, signal.SIGTERM)
    worker.proc.wait(SOFT_S + 20)
    return time.monotonic() - t


def test_sigterm_finishes_or_requeues_the_batch_within_the_soft_timeout(
    bed: FaultBed,
    fault_proxy: FaultProxy,
) -> None:
    t0 = time.monotonic()
    archive = bed.archive(n=6)
    stack = bed.stack(worker_soft_shutdown_timeout=SOFT_S)
    env = stack.env(s3_endpoint_url=fault_proxy.endpoint)

    # 1. a batch longer than the soft timeout (uploads stall 8 s): cancelled, its message back in the queue
    fault_proxy.policy = slow_puts(8.0)
    first = bed.start_worker(env)
    submit_run(stack, archive, "term", batch_size=3)
    took = sigterm_when_uploading(fault_proxy, first)
    assert SOFT_S <= took < SOFT_S + 6, took
    text = first.log.read_text(errors="replace")
    assert "Initiating Soft Shutdown" in text and "Cold shutdown" in text, text[-2000:]
    assert counts(bed.pg_url, "term") == {"queued": 6, "done": 0, "failed": 0}
    assert bed.redis.backlog() == (2, 0), "the cancelled batch is back in the queue, none held unacked"

    # 2. a batch shorter than the soft timeout (uploads stall 1 s): it finishes and is acknowledged
    fault_proxy.policy = slow_puts(1.0)
    second = bed.start_worker(env, hostname="w2@%h")
    took = sigterm_when_uploading(fault_proxy, second)
    assert took < SOFT_S + 6, took
    assert counts(bed.pg_url, "term") == {"queued": 3, "done": 3, "failed": 0}
    assert bed.redis.backlog() == (1, 0)

    # 3. a new worker finishes the run
    fault_proxy.policy = FaultPolicy()
    third = bed.start_worker(env, hostname="w3@%h")
    status = wait_drained(bed.pg_url, "term", [third], timeout=60)
    audit = audit_run(stack, bed.s3, "term")
    assert status == {"queued": 0, "done": 6, "failed": 0}
    assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == [] and audit.bad_masks == []
    bed.table.append(
        (
            "graceful shutdown (SIGTERM, soft timeout 3 s)",
            6,
            "SIGTERM mid-batch x2: one batch requeued, one finished",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )
