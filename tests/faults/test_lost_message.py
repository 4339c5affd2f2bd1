"""A message the broker lost: the worker's orphan sweep publishes its images again and the run finishes, each
image segmented once.

The loss is made the way the Redis transport can lose one (a message popped from the queue that never reached the
unacknowledged set): the test pops a batch's message itself before any worker starts."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FaultBed
from tests.faults.runs import audit_run, log_count, submit_run, wait_drained
from tests.faults.services import QUEUE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_lost_message_is_published_again_by_the_orphan_sweep(
    bed: FaultBed,
) -> None:
    t0 = time.monotonic()
    archive = bed.archive(n=6)
    stack = bed.stack(orphan_sweep_s=2)
    submit_run(stack, archive, "lost", batch_size=2)
    client = bed.redis.client()
    assert client.llen(QUEUE) == 3
    assert client.rpop(QUEUE) is not None  # the next message to be delivered is gone: 2 images without one
    time.sleep(2.5)  # they were published one sweep interval ago by the time the worker looks

    worker = bed.start_worker(stack.env())
    wait_drained(bed.pg_url, "lost", [worker], timeout=90)
    audit = audit_run(stack, bed.s3, "lost")
    assert (audit.done, audit.failed, audit.queued) == (6, 0, 0), audit
    assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == [], audit
    assert log_count(worker.log, r"run \d+: 2 queued image\(s\) had no message in the broker") == 1
    assert bed.redis.backlog() == (0, 0)
    bed.table.append(("lost message (popped, never unacked)", 6, "1 message of 3 lost", 0, 0, time.monotonic() - t0))
