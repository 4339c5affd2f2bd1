"""Broker restart: the test's own Redis is killed mid-run and restarted; the worker reconnects, a producer that
publishes while the broker is down waits for it, and both runs complete with nothing lost."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.conftest import FaultBed
from tests.faults.runs import audit_run, log_count, submit_run, wait_drained, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECEIVED = r"segment_batch\[[0-9a-f-]+\] received"


def test_redis_restart_mid_run_loses_nothing(
    bed: FaultBed,
) -> None:
    t0 = time.monotonic()
    archive = bed.archive(n=12)
    stack = bed.stack()
    worker = bed.start_worker(stack.env())
    submit_run(stack, archive, "before", batch_size=2)
    wait_for_log(worker.log, RECEIVED, count=3, timeout=60)  # mid-run: a batch in flight, more queued

    # crash Redis (SIGKILL); it comes back 2 s later on the same port with its append-only file
    bed.redis.kill()
    restarter = threading.Timer(2.0, bed.redis.start)
    restarter.start()
    t_publish = time.monotonic()
    submit_run(stack, archive, "during", batch_size=3)  # publishes while the broker is down: waits for it
    publish_wait = time.monotonic() - t_publish
    restarter.join()
    assert publish_wait > 1.0, "the producer published before the broker was back?"

    wait_drained(bed.pg_url, "before", [worker], timeout=90)
    wait_drained(bed.pg_url, "during", [worker], timeout=90)
    text = worker.log.read_text(errors="replace")
    assert "Connection to broker lost" in text or "Cannot connect to" in text, text[-3000:]
    assert log_count(worker.log, r"Connected to rediss?://") >= 2, "the worker reconnected"
    assert bed.redis.password not in text  # the password-bearing broker URL is never logged in clear

    lost = dup = 0
    for run, n in (("before", 12), ("during", 12)):
        audit = audit_run(stack, bed.s3, run)
        assert (audit.done, audit.failed, audit.queued) == (n, 0, 0), (run, audit)
        assert audit.missing_objects == [] and audit.bad_masks == [], audit
        lost, dup = lost + audit.lost, dup + audit.duplicates
    assert lost == 0 and dup == 0
    assert bed.redis.backlog() == (0, 0)
    bed.table.append(
        (
            "broker restart (Redis SIGKILL, 2 s down, AOF)",
            24,
            "1 Redis crash; publish during outage",
            lost,
            dup,
            time.monotonic() - t0,
        )
    )
