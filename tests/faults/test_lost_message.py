"""A message the broker lost: the worker's orphan sweep publishes its images again and the run finishes, each
image segmented once.

The loss is made the way the Redis transport can lose one (a message popped from the queue that never reached the
unacknowledged set): the test pops a batch's message itself before any worker starts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import S3Server
from tests.faults.runs import audit_run, log_count, make_archive, make_stack, submit_run, wait_drained
from tests.faults.services import QUEUE, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_lost_message_is_published_again_by_the_orphan_sweep(
    s3_server: S3Server,
    s3_bucket: str,
    private_redis: RedisServer,
    pg_url: str,
    fault_phantoms: Path,
    tiny_checkpoint: Path,
    start_worker,
    fault_table,  # type: ignore[no-untyped-def]
) -> None:
    t0 = time.monotonic()
    archive = make_archive(s3_server, s3_bucket, fault_phantoms, tiny_checkpoint, n=6)
    stack = make_stack(s3_server, s3_bucket, private_redis.url, pg_url, orphan_sweep_s=2)
    submit_run(stack, archive, "lost", batch_size=2)
    client = private_redis.client()
    assert client.llen(QUEUE) == 3
    assert client.rpop(QUEUE) is not None  # the next message to be delivered is gone: 2 images without one
    time.sleep(2.5)  # they were published one sweep interval ago by the time the worker looks

    worker = start_worker(stack.env())
    wait_drained(pg_url, "lost", [worker], timeout=90)
    audit = audit_run(stack, s3_server, "lost")
    assert (audit.done, audit.failed, audit.queued) == (6, 0, 0), audit
    assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == [], audit
    assert log_count(worker.log, r"run \d+: 2 queued image\(s\) had no message in the broker") == 1
    assert private_redis.backlog() == (0, 0)
    fault_table.append(("lost message (popped, never unacked)", 6, "1 message of 3 lost", 0, 0, time.monotonic() - t0))
