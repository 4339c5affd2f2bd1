"""Poison batches and ``pixelperfect retry``: a batch whose checkpoint is unreachable is retried a bounded number
of times with growing backoff, then its images end failed with the error and the queue drains; once the
checkpoint is back, ``pixelperfect retry RUN --reason batch_error`` brings them to done."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import PIXELPERFECT, ROOT, embedded_settings
from tests.faults.conftest import FaultBed
from tests.faults.runs import audit_run, counts, submit_run, wait_drained

FAILED = re.compile(r"\[([\d-]+ [\d:,]+): \w+/ForkPoolWorker-\d+\] batch (\S+) of run \d+ failed")


def failure_times(log: str) -> dict[str, list[float]]:
    """Task id -> seconds (since the epoch) of each failed attempt, from the worker log."""
    out: dict[str, list[float]] = {}
    for stamp, task_id in FAILED.findall(log):
        out.setdefault(task_id, []).append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_poison_batch_is_retried_with_backoff_then_failed_and_retry_command_recovers_it(
    bed: FaultBed,
) -> None:
    t0 = time.monotonic()
    archive = bed.archive(n=6)
    stack = bed.stack(task_max_retries=2, retry_backoff_s=1,
                       retry_jitter=False)  # fmt: skip
    submit_run(stack, archive, "poison", batch_size=3)  # reads the checkpoint, records its sha256
    bed.s3.client().delete_object(Bucket=bed.bucket, Key="models/sam_tiny.pth")  # now unreachable
    worker = bed.start_worker(stack.env())
    status = wait_drained(bed.pg_url, "poison", [worker], timeout=60)

    assert status == {"queued": 0, "done": 0, "failed": 6}
    audit = audit_run(stack, bed.s3, "poison")
    for reason, error in audit.failures.values():
        assert reason == "batch_error" and f"no object at s3://{bed.bucket}/models/sam_tiny.pth" in error, error
    log = worker.log.read_text(errors="replace")
    times = failure_times(log)
    assert len(times) == 2 and all(len(t) == 3 for t in times.values()), times  # 1 try + 2 retries per batch
    for attempts in times.values():  # backoff 1 s, then 2 s (the log has millisecond stamps)
        assert attempts[1] - attempts[0] >= 0.95 and attempts[2] - attempts[1] >= 1.95, attempts
    assert len(re.findall(r"failed 3 times; marking its images failed", log)) == 2
    time.sleep(0.5)
    assert bed.redis.backlog() == (0, 0), "the queue drained: nothing waits, nothing unacknowledged"
    poison_s = time.monotonic() - t0
    bed.table.append(
        ("poison batch (unreachable checkpoint)", 6, "2 batches x 3 attempts (backoff 1, 2 s)", 0, 0, poison_s)
    )

    # the fix: the checkpoint is back; `pixelperfect retry` re-enqueues only what failed for that reason
    t1 = time.monotonic()
    bed.s3.client().put_object(Bucket=bed.bucket, Key="models/sam_tiny.pth", Body=bed.checkpoint.read_bytes())
    out = subprocess.run(
        [PIXELPERFECT, "retry", "poison", "--reason", "batch_error", "--batch-size", "3"],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "6 failed image(s) re-queued (batch_error: 6); enqueued 2 batch(es)" in out.stdout, out.stdout
    status = wait_drained(bed.pg_url, "poison", [worker], timeout=60)
    audit = audit_run(stack, bed.s3, "poison")
    assert status == {"queued": 0, "done": 6, "failed": 0}, audit.failures
    assert audit.segments == audit.distinct_segments == audit.expected_segments > 0
    assert audit.missing_objects == [] and audit.bad_masks == []
    assert audit.reprocessed == 6  # attempts 2: failed once, done once — never done twice
    bed.table.append(
        (
            "pixelperfect retry after the fix",
            6,
            "6 failed images re-enqueued",
            audit.queued,
            audit.segments - audit.distinct_segments,
            time.monotonic() - t1,
        )
    )


@pytest.mark.slow
def test_retry_embedded_reenqueues_only_the_chosen_reason(tmp_path: Path, phantom_dir: Path) -> None:
    """Embedded: images fail ``missing`` and ``not_an_image``; retry picks a reason, fixed ones end done."""
    import shutil

    from pixelperfect.cli.run import retry_failed
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope
    from pixelperfect.embedded import SubmitRequest, run_embedded, submit

    images = tmp_path / "images"
    shutil.copytree(phantom_dir / "images", images)
    settings = embedded_settings(tmp_path, batch_size=4)
    req = SubmitRequest(
        source=f"file://{images}",
        run="r",
        variants=["raw"],
        model="sam_tiny",
        annotations=str(phantom_dir / "labels.csv"),
    )
    registered = submit(req, settings, execute=False)  # 12 images listed and registered
    (images / "phantom-00002.png").rename(tmp_path / "aside.png")  # vanishes after listing
    (images / "phantom-00005.png").write_bytes(b"not an image")
    with session_scope(settings.database_url) as session:
        keys = repo.keys_with_status(session, run_id=registered.run_id, statuses=["queued"])
    run_embedded(registered.run_id, [keys[i : i + 4] for i in range(0, len(keys), 4)], settings)

    def failures() -> dict[str, int]:
        with session_scope(settings.database_url) as session:
            return repo.failure_counts(session, run_id=registered.run_id)

    assert failures() == {"missing": 1, "not_an_image": 1}
    with pytest.raises(LookupError, match="nope"):
        retry_failed("nope", settings)
    again = retry_failed("r", settings, reason="missing")  # not fixed yet: fails the same way
    assert (again.images, again.batches) == (1, 1) and failures() == {"missing": 1, "not_an_image": 1}

    (tmp_path / "aside.png").rename(images / "phantom-00002.png")
    fixed = retry_failed("r", settings, reason="missing")
    assert (fixed.images, fixed.reasons) == (1, {"missing": 1, "not_an_image": 1})
    assert failures() == {"not_an_image": 1}, "only the chosen reason was retried"
    shutil.copy(phantom_dir / "images" / "phantom-00005.png", images / "phantom-00005.png")
    assert retry_failed("r", settings).images == 1
    assert counts(settings.database_url, "r") == {"queued": 0, "done": 12, "failed": 0}
