"""``run_batch``: one batch of a run's images, top to bottom. Celery and embedded mode both call it.

1. lease: the batch's queued images nobody else holds (``worker/leases.py``; a cancelled run's end ``cancelled``),
   then their prompts;
2. fetch -> decode -> preprocess -> encode -> prompt -> segment -> score -> store: the overlapped stages of
   :class:`~pixelperfect.worker.flow.BatchFlow` (I/O threads, the model on this thread, post and upload threads);
3. persist: every row of the batch in one transaction, after every mask object exists
   (:func:`~pixelperfect.worker.persist.persist_batch`).

Per-image problems (undecodable bytes, a missing object, a bad ground-truth mask) end that image ``failed`` with a
reason and never stop the batch. Infrastructure problems (store, database, model) raise, so the caller retries
the whole batch; every write is an idempotent upsert, and a mask object is written before the row that names it.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Sequence

from pixelperfect.db import repo
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.options import PromptMode
from pixelperfect.version import VERSION_CHANGED
from pixelperfect.worker import leases, pausing, segout
from pixelperfect.worker.fetch import ImageTodo
from pixelperfect.worker.flow import BatchFlow
from pixelperfect.worker.persist import BatchSummary, persist_batch
from pixelperfect.worker.runtime import MISSING_DEPENDENCY, Runtime, get_runtime
from pixelperfect.worker.telemetry import observe_batch

log = logging.getLogger(__name__)

__all__ = ["BatchSummary", "run_batch"]


def run_batch(
    run_id: int,
    keys: Sequence[str],
    runtime: Runtime | None = None,
    *,
    worker_host: str | None = None,
    lease: str | None = None,
    publish_segs: Callable[[int, list[int]], None] | None = None,
) -> BatchSummary:
    """Process the images ``keys`` of run ``run_id`` (already registered as image rows).

    ``worker_host`` goes into ``Image.worker_host``: the Celery node name (``gpu0@host``) inside a worker, so two
    workers on one machine stay apart; the machine's hostname when not given (embedded runs). ``lease``: the
    message's id (the Celery task id) that owns the images' leases (``worker/leases.py``); None makes one up.
    Only the images this call leases are processed: finished, failed, cancelled and other-leased ones are skipped
    without model work (a cancelled run's queued images end ``cancelled``).

    ``publish_segs(run_id, image_ids)``: for a run with ``--output png,dicom-seg``, called with the batch's done
    images after they are persisted, instead of building their DICOM-SEGs here (the Celery worker publishes
    ``pixelperfect.build_segs`` on queue ``seg``); None builds them in this call, after the model work (embedded).
    """
    rt = runtime or get_runtime()
    summary = BatchSummary(run_id)
    t_start = time.perf_counter()
    host = worker_host or socket.gethostname()
    hold = leases.acquire(
        rt.settings.database_url, run_id, list(keys), owner=lease, host=host, ttl_s=rt.settings.visibility_timeout
    )
    summary.cancelled = hold.cancelled
    summary.skipped = len(keys) - len(hold.todo) - hold.cancelled
    if not hold.todo:
        return summary
    try:
        return _run_held(rt, hold, summary, host, t_start, publish_segs)
    except pausing.StoreFailure as failure:
        if _pause_after(rt, hold, failure):  # N images in a row could not be written: the run paused itself
            summary.paused = True
            return summary
        if hold.generated:
            hold.release_now()
        raise
    except BaseException:
        if hold.generated:  # no message comes back under a made-up owner: let the caller's retry in at once
            hold.release_now()
        raise


def _pause_after(rt: Runtime, hold: leases.Hold, failure: pausing.StoreFailure) -> bool:
    """Count the batch's images against the run (``worker/pausing.py``); at ``pause_after_failed_writes`` pause it,
    dropping the batch's leases in the same transaction (its images stay queued). True when paused here; False
    below the limit or when the pause itself cannot be written (the batch is then retried as before)."""
    limit = rt.settings.pause_after_failed_writes
    in_a_row = pausing.failed(rt.settings.database_url, hold.run_id, len(hold.todo))
    if limit <= 0 or in_a_row < limit:
        return False
    try:
        pausing.pause(rt.settings.database_url, hold.run_id, pausing.why(failure, in_a_row),
                      ttl_s=rt.settings.visibility_timeout, release=hold.release)  # fmt: skip
    except Exception as exc:
        log.error("run %s: could not pause it (%s); the batch is retried", hold.run_id, exc)
        return False
    return True


def _run_held(
    rt: Runtime,
    hold: leases.Hold,
    summary: BatchSummary,
    host: str,
    t_start: float,
    publish_segs: Callable[[int, list[int]], None] | None,
) -> BatchSummary:
    """The leased images of the batch: read, flow, persist (leases released in the persisting transaction)."""
    run = rt.run_spec(hold.run_id)
    refusal = rt.version_refusal(run)
    if refusal is not None:
        return _refuse(rt, hold, summary, refusal, t_start)
    missing = rt.dependency_refusal(run)
    if missing is not None:  # permanent for this worker: no retries burnt; `retry` once the package is installed
        return _refuse(rt, hold, summary, missing, t_start, reason=MISSING_DEPENDENCY)
    deferred = publish_segs is not None and segout.wants_seg(run)
    if deferred:  # the flow neither keeps the sources nor builds SEGs: queue `seg` does
        run = dataclasses.replace(run, outputs=tuple(o for o in run.outputs if o != "dicom-seg"))
    keys = [key for _, key, _ in hold.todo]
    with session_scope(rt.settings.database_url) as session:
        boxes = repo.boxes_for(session, run_id=run.id, keys=keys)
        points = (
            repo.points_for(session, run_id=run.id, keys=keys) if run.process.prompt_mode == PromptMode.points else {}
        )
        if run.process.prompt_mode == PromptMode.concept:  # exemplar boxes travel as the image's points
            points = repo.exemplars_for(session, run_id=run.id, keys=keys)
    todo = [ImageTodo(key, image_id, gt) for image_id, key, gt in hold.todo]
    read_s = time.perf_counter() - t_start
    segmenter = rt.segmenter(run)  # loaded once per process; raises (-> batch retry) if the model cannot load
    flow = BatchFlow(rt, run, segmenter, rt.store(run.store_url), boxes, points, before_model=hold.before_model)
    fetched, results = flow.run(todo)
    seg_rows = segout.finish_segs(rt, run, fetched)  # DICOM-SEG rows (and STOW-RS), when the run writes SEGs

    t0 = time.perf_counter()
    _persist = _writes_to_database(rt, persist_batch)
    _persist(
        rt.settings.database_url,
        summary,
        fetched,
        results,
        host=host,
        read_s=read_s,
        in_transaction=hold.release,
        seg_rows=seg_rows,
        fence=hold.fence,
    )
    pausing.wrote(rt.settings.database_url, run.id)
    observe_batch(
        done=summary.done,
        failures=summary.failures,
        segments=summary.segments,
        timings=summary.timings,
        seconds=time.perf_counter() - t_start,
    )
    if deferred and publish_segs is not None and summary.done_ids:  # only what this execution wrote
        publish_segs(run.id, list(summary.done_ids))
    log.info(
        "run %s batch: %d done, %d failed, %d skipped, db %.3fs",
        run.name,
        summary.done,
        summary.failed,
        summary.skipped,
        time.perf_counter() - t0,
    )
    return summary


def _writes_to_database(rt: Runtime, persist: Callable[..., None]) -> Callable[..., None]:
    """``persist`` whose database errors raise as :class:`~pixelperfect.worker.pausing.StoreFailure` (counted
    against the run like a store that refuses)."""
    from pixelperfect.failures import redact

    def call(*args: object, **kwargs: object) -> None:
        try:
            persist(*args, **kwargs)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] != "sqlalchemy":
                raise
            raise pausing.StoreFailure("database", redact(rt.settings.database_url), exc) from exc

    return call


def _refuse(
    rt: Runtime, hold: leases.Hold, summary: BatchSummary, why: str, t_start: float, *, reason: str = VERSION_CHANGED
) -> BatchSummary:
    """The batch's held images end ``failed`` with ``reason`` (``version_changed``: ``submit
    --allow-version-change`` queues them again; ``missing_dependency``: ``retry``) and ``why``, without model work,
    in one transaction that also drops the leases."""
    with session_scope(rt.settings.database_url) as session:
        kept = hold.fence(session)
        for image_id, key, _ in hold.todo:
            if image_id in kept:
                repo.mark_failed(session, image_id=image_id, reason=reason, error=why)
                summary.failures[key] = reason
        hold.release(session)
    summary.failed = len(summary.failures)
    observe_batch(done=0, failures=summary.failures, segments=0, timings=[], seconds=time.perf_counter() - t_start)
    log.error("run %s: %d image(s) refused: %s", hold.run_id, summary.failed, why)
    return summary
