"""Runs you can steer, with real workers on Redis, PostgreSQL and the S3 server: a cancelled run's messages are
acknowledged without model work and ``submit`` resumes it; a re-submit while the first submission's messages are
queued publishes nothing twice, and duplicate messages consumed by two workers at once cost no second encoder
pass (model work counted from the durable ``model_work`` record: exactly one per image)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.conftest import FaultBed
from tests.faults.runs import (
    Archive,
    Stack,
    audit_run,
    counts,
    run_id_of,
    use_broker,
    wait_drained,
)
from tests.faults.services import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def model_work(database_url: str, run: str) -> tuple[int, int]:
    from pixelperfect.db import control
    from pixelperfect.db.session import session_scope

    with session_scope(database_url) as session:
        return control.model_work(session, run_id=run_id_of(database_url, run))


def submit(stack: Stack, archive: Archive, run: str, *, batch_size: int = 2, republish: bool = False) -> Any:
    from pixelperfect.producer.enqueue import SubmitRequest
    from pixelperfect.producer.enqueue import submit as do_submit

    use_broker(stack.settings)
    req = SubmitRequest(
        source=archive.source,
        run=run,
        variants=("raw",),
        model="sam_tiny",
        checkpoint=archive.checkpoint_url,
        annotations=archive.labels,
        batch_size=batch_size,
        republish=republish,
    )
    return do_submit(req, stack.settings)


def wait_empty(redis: RedisServer, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis.backlog() == (0, 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"queue not empty after {timeout}s: {redis.backlog()}")


def test_cancelled_run_is_acknowledged_without_model_work_and_submit_resumes_it(
    bed: FaultBed,
) -> None:
    from pixelperfect.producer.lifecycle import cancel

    archive = bed.archive(n=16)
    stack = bed.stack()
    first = submit(stack, archive, "stopme")
    assert first.batches == 8 and bed.redis.backlog() == (8, 0)
    result = cancel("stopme", stack.settings)
    assert result.cancelled == 16 and result.in_flight == 0
    worker = bed.start_worker(stack.env())
    wait_empty(bed.redis)  # every message acknowledged...
    assert model_work(bed.pg_url, "stopme") == (0, 0)  # ...without model work
    assert counts(bed.pg_url, "stopme") == {"queued": 0, "done": 0, "failed": 0, "cancelled": 16}

    again = submit(stack, archive, "stopme")  # submit on a cancelled run resumes it
    assert again.resumed == 16 and again.pending == 16 and again.batches == 8
    status = wait_drained(bed.pg_url, "stopme", [worker])
    assert status == {"queued": 0, "done": 16, "failed": 0}
    assert model_work(bed.pg_url, "stopme") == (16, 16)
    audit = audit_run(stack, bed.s3, "stopme")
    assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == []


def test_resubmit_while_queued_and_duplicate_messages_cost_one_encoder_pass_per_image(
    bed: FaultBed,
) -> None:
    archive = bed.archive(n=24)
    stack = bed.stack()
    workers = [bed.start_worker(stack.env(), hostname=f"w{i}@%h") for i in (1, 2)]
    first = submit(stack, archive, "twice")
    assert first.batches == 12
    again = submit(stack, archive, "twice")  # the first submission's messages are still queued or running
    assert again.pending == 0 and again.batches == 0, again  # decided from SQL: nothing published twice
    # a producer that lost track (crashed before noting what it published): every queued image a second time,
    # cut differently, so two workers hold overlapping batches at the same moment
    forced = submit(stack, archive, "twice", batch_size=3, republish=True)
    assert forced.batches >= 1
    status = wait_drained(bed.pg_url, "twice", workers)
    wait_empty(bed.redis)
    assert status == {"queued": 0, "done": 24, "failed": 0}
    records, images = model_work(bed.pg_url, "twice")
    assert (records, images) == (24, 24), f"encoder calls / images = {records}/{images}"
    audit = audit_run(stack, bed.s3, "twice")
    assert audit.lost == 0 and audit.duplicates == 0 and audit.missing_objects == [] and audit.bad_masks == []
    print(f"re-submit: {forced.pending} images republished; encoder calls / images = {records / images:.3f}")
