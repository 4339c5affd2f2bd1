"""Storage faults: every S3 request of the worker goes through a proxy that answers ~20 % of them with 500,
503 ServiceUnavailable, 503 SlowDown, a 1 s stall, a connection reset (before or after the write) or a truncated
body. boto3's standard retries absorb most; a truncated body is not retried by botocore and fails the batch,
which the task retries with backoff. The run completes and no mask row names an object that is not there."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FaultBed
from tests.faults.runs import audit_run, log_count, submit_run, wait_drained
from tests.faults.services import FaultPolicy, FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_s3_errors_and_stalls_are_retried_and_no_row_points_at_a_missing_object(
    bed: FaultBed,
    fault_proxy: FaultProxy,
) -> None:
    t0 = time.monotonic()
    archive = bed.archive(n=16)
    stack = bed.stack(task_max_retries=6)
    # the first two GETs (the checkpoint) come back truncated: two task retries for certain; then 20 % at random
    fault_proxy.policy = FaultPolicy(rate=0.2, stall_s=1.0, forced=["truncate", "truncate"])
    worker = bed.start_worker(stack.env(s3_endpoint_url=fault_proxy.endpoint))
    submit_run(stack, archive, "s3faults", batch_size=4, variants=("raw", "clahe"))  # the producer talks to S3
    status = wait_drained(bed.pg_url, "s3faults", [worker], timeout=120)
    fault_proxy.policy = FaultPolicy()

    faults = {k: v for k, v in fault_proxy.counts.items() if k != "requests"}
    injected = sum(faults.values())
    assert fault_proxy.counts["requests"] > 40 and injected >= 0.1 * fault_proxy.counts["requests"], faults
    assert faults.get("truncate", 0) >= 2
    retries = log_count(worker.log, r"retry \d+ in")
    assert retries >= 2, worker.log.read_text()[-3000:]

    audit = audit_run(stack, bed.s3, "s3faults", n_variants=2)
    assert status == {"queued": 0, "done": 16, "failed": 0}, (status, audit.failures)
    assert audit.missing_objects == [], "a mask row names an object that is not in the store"
    assert audit.bad_masks == []
    assert audit.lost == 0 and audit.duplicates == 0, audit
    bed.table.append(
        (
            "storage faults (proxy, 20 %)",
            16,
            f"{injected} of {fault_proxy.counts['requests']} S3 requests ("
            + ", ".join(f"{k} {v}" for k, v in sorted(faults.items()))
            + f"); {retries} task retries",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )
