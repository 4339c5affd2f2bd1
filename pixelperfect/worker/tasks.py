"""Thin, ID-driven tasks: JSON arguments in, ``run_batch`` does the work, the decorator owns the retry policy."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from pixelperfect.worker.app import app

log = logging.getLogger(__name__)

#: Backoff between retries of a whole batch is exponential from ``retry_backoff_s``, capped at 5 minutes.
BACKOFF_MAX_S = 300.0


def backoff(retries: int) -> float:
    from pixelperfect.config import get_settings

    return float(min(BACKOFF_MAX_S, get_settings().retry_backoff_s * 2**retries))


@app.task(name="pixelperfect.segment_batch", bind=True, acks_late=True, reject_on_worker_lost=True)
def segment_batch(self: Task, run_id: int, keys: list[str]) -> dict[str, Any]:
    """Segment ``keys`` of run ``run_id``; after ``task_max_retries`` failed retries its images are marked failed."""
    from pixelperfect.config import get_settings
    from pixelperfect.worker.batch import run_batch

    try:
        return run_batch(run_id, keys).as_dict()
    except Exception as exc:
        retries = self.request.retries or 0
        if retries < get_settings().task_max_retries:
            log.warning(
                "batch of run %s failed (%s: %s); retry %d in %.0fs",
                run_id,
                type(exc).__name__,
                exc,
                retries + 1,
                backoff(retries),
            )
            raise self.retry(exc=exc, countdown=backoff(retries), max_retries=None) from exc
        log.error("batch of run %s failed %d times; marking its images failed: %s", run_id, retries + 1, exc)
        return give_up(run_id, keys, exc)


def give_up(run_id: int, keys: list[str], exc: BaseException) -> dict[str, Any]:
    """Record a poison batch: its unfinished images end ``failed`` with the error, so the queue drains."""
    from pixelperfect.config import get_settings
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope

    with session_scope(get_settings().database_url) as session:
        rows = repo.images_by_key(session, run_id=run_id, keys=keys)
        for row in rows.values():
            repo.mark_failed(session, image_id=row.id, reason="batch_error", error=f"{type(exc).__name__}: {exc}")
    return {"run_id": run_id, "done": 0, "failed": len(keys), "gave_up": True}
