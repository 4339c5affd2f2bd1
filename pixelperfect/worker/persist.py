"""The persist stage: a batch's outcome in one transaction, after every mask object it names exists."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from pixelperfect.config import get_settings
from pixelperfect.db import bulk, control, repo
from pixelperfect.db import segs as seg_repo
from pixelperfect.db.models import ImageStatus
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.records import ImageResult
from pixelperfect.worker import pausing
from pixelperfect.worker.fetch import FetchedImage
from pixelperfect.worker.telemetry import observe_batch


@dataclass
class BatchSummary:
    run_id: int
    done: int = 0
    failed: int = 0
    skipped: int = 0  # finished, failed, or held by another message's lease: no model work here
    cancelled: int = 0  # its run was cancelled: acknowledged without model work
    paused: bool = False  # its results could not be written and the run paused itself (worker/pausing.py)
    segments: int = 0
    done_ids: list[int] = field(default_factory=list)  # the images this call wrote as done (after the fence)
    failures: dict[str, str] = field(default_factory=dict)
    timings: list[dict[str, float]] = field(default_factory=list)  # per finished image, seconds per stage

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "segments": self.segments,
            "paused": self.paused,
        }


def persist_batch(
    database_url: str,
    summary: BatchSummary,
    fetched: Sequence[FetchedImage],
    results: dict[str, ImageResult],
    *,
    host: str,
    read_s: float,
    in_transaction: Callable[[Session], None] | None = None,
    seg_rows: Sequence[dict[str, Any]] = (),
    fence: Callable[[Session], set[int]] | None = None,
) -> None:
    """Write every image of the batch — finished ones with their segment rows, failed ones with their reason —
    and the stage timings, in one transaction; counts go into ``summary``. ``read_s``: the batch's earlier
    database reads, shared out with the writes into each image's ``db`` timing. ``in_transaction(session)``: more
    writes of the caller in the same transaction (the batch's leases released). ``fence(session)``: first in the
    transaction, the image ids this execution may still write (worker/leases.py); the others are skipped."""
    t0 = time.perf_counter()
    done: list[bulk.DoneImage] = []
    done_timings: dict[int, dict[str, float]] = {}
    with session_scope(database_url) as session:
        if fence is not None:
            kept = fence(session)
            summary.skipped += sum(f.todo.image_id not in kept for f in fetched)
            fetched = [f for f in fetched if f.todo.image_id in kept]
            image_ids = {f.todo.image_id for f in fetched}
            seg_rows = [row for row in seg_rows if row.get("image_id") in image_ids]
        for f in fetched:
            result = results.get(f.key)
            fields = {**f.fields, "worker_host": host}
            if f.reason is None and result is not None:
                done.append(bulk.DoneImage(f.todo.image_id, result.segments, fields))
                done_timings[f.todo.image_id] = {**f.timings, **result.timings}  # fetch stages + model stages
                summary.done += 1
                summary.done_ids.append(f.todo.image_id)
                summary.segments += len(result.segments)
            else:
                reason = f.reason or "unknown"
                repo.mark_failed(session, image_id=f.todo.image_id, reason=reason, error=f.error or "", fields=fields)
                summary.failed += 1
                summary.failures[f.key] = reason
        bulk.mark_done_many(session, run_id=summary.run_id, images=done)  # a few executemany statements
        # "db": this image's share of the batch's reads and writes (all but the commit), known only now, so the
        # timings go in with one more statement in the same transaction
        db_each = (read_s + time.perf_counter() - t0) / max(len(fetched), 1)
        for timings in done_timings.values():
            timings["db"] = db_each
        repo.set_timings(session, timings={i: _rounded(t) for i, t in done_timings.items()})
        if in_transaction is not None:
            in_transaction(session)
        if seg_rows:  # --output dicom-seg: one row per image and variant (worker/segout.py)
            seg_repo.upsert_segs(session, run_id=summary.run_id, rows=seg_rows)
    summary.timings = list(done_timings.values())


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in timings.items()}


def give_up(run_id: int, keys: list[str], exc: BaseException, *, reason: str = "batch_error") -> dict[str, Any]:
    """Record a poison batch: its unfinished images end ``failed`` with ``reason`` and the error, so the queue
    drains (a done image is never downgraded). The Celery tasks call it after their last retry, embedded runs after
    theirs; it lives here, not in ``worker/tasks.py``, so that an embedded run imports no Celery (issue 33).

    A batch whose retries were spent on write failures (the store or database refused its results) fails no image:
    the run pauses itself instead (``worker/pausing.py``), its images stay queued."""
    settings = get_settings()
    failure = pausing.store_failure(exc)
    if failure is not None:
        pausing.pause(settings.database_url, run_id, pausing.why(failure), ttl_s=settings.visibility_timeout)
        return {"run_id": run_id, "done": 0, "failed": 0, "paused": True}
    with session_scope(settings.database_url) as session:
        control.limit_idle(session, ttl_s=settings.visibility_timeout)
        rows = repo.images_by_key(session, run_id=run_id, keys=keys)
        unfinished = [row for row in rows.values() if row.status != ImageStatus.done]
        for row in unfinished:
            repo.mark_failed(session, image_id=row.id, reason=reason, error=f"{type(exc).__name__}: {exc}")
    observe_batch(done=0, failures={row.key: reason for row in unfinished}, segments=0, timings=[], seconds=0.0)
    return {"run_id": run_id, "done": 0, "failed": len(unfinished), "gave_up": True}
