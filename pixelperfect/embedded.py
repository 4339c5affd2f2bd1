"""Embedded mode: a submission run in this process, without a broker — the producer's registration and batching
composed with the worker's batch code, here, above both (neither imports the other's execution side).

``submit`` and ``dispatch`` behave as ``producer.enqueue``'s with a broker set (they publish) and run the batches
here, in order, when ``PIXELPERFECT_BROKER_URL`` is unset. A failing batch is retried as a worker would
(``settings.retry_policy``: the Celery task's retries and backoff), then its images are recorded failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pixelperfect.config import Settings
from pixelperfect.producer import enqueue
from pixelperfect.producer.enqueue import SubmitError, SubmitRequest, SubmitResult

__all__ = ["SubmitError", "SubmitRequest", "SubmitResult", "dispatch", "run_embedded", "submit"]


def run_embedded(
    run_id: int,
    batches: list[list[str]],
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Run ``batches`` (lists of image keys of run ``run_id``) in order, in this process, with the worker's retry
    policy (``settings.retry_policy``, the one the Celery task has): retry a failing batch, then give up on it.
    ``on_progress(images_done, images_total)`` after each batch."""
    from pixelperfect.worker.batch import run_batch
    from pixelperfect.worker.persist import give_up  # not worker.tasks: that would import Celery (issue 33)

    total = sum(len(b) for b in batches)
    done = 0
    policy = settings.retry_policy
    for batch in batches:
        for attempt in range(policy.max_retries + 1):
            try:
                run_batch(run_id, batch)
                break
            except Exception as exc:
                if attempt == policy.max_retries:
                    give_up(run_id, batch, exc)
                else:
                    time.sleep(policy.delay(attempt))
        done += len(batch)
        if on_progress:
            on_progress(done, total)


def submit(
    req: SubmitRequest,
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    execute: bool = True,
) -> SubmitResult:
    """``producer.enqueue.submit`` that runs the batches here when no broker is set (see the module docstring)."""
    return enqueue.submit(req, settings, on_progress=on_progress, execute=execute, run_batches=run_embedded)


def dispatch(
    run_id: int,
    run_name: str,
    batches: list[list[str]],
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """``producer.enqueue.dispatch`` that runs the batches here when no broker is set."""
    enqueue.dispatch(run_id, run_name, batches, settings, on_progress=on_progress, run_batches=run_embedded)
