"""Thin, ID-driven tasks: JSON arguments in, ``run_batch`` does the work, Celery does the retrying.

A failed batch is retried through Celery's ``Task.retry`` with the one :class:`~pixelperfect.config.RetryPolicy` of the
settings as they are when the task runs (its countdown, Celery's exponential backoff with jitter, and its
``max_retries``), never as they were when this module was imported; when the last retry failed too, ``persist.give_up``
records its images as failed with the error. Whenever the outcome cannot be recorded — the retry message cannot be
published (broker down), or the database refuses the failure rows — the message is handed back to the broker instead of
being acknowledged, so the batch runs again later.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown

from pixelperfect.broker.names import BUILD_SEGS, GPU_QUEUE, SEGMENT_BATCH, TRAIN
from pixelperfect.config import get_settings
from pixelperfect.worker.app import app

log = logging.getLogger(__name__)

#: A batch whose pool process died this many times (a crashing decoder, the OOM killer) is split into one task per
#: image; a single image that takes its pool process down this many times ends ``failed`` with ``worker_lost``.
#: Without this, reject-on-worker-lost would hand a poison file from worker to worker forever.
MAX_WORKER_LOSSES = 2
#: How long a task's delivery count is kept in Redis (well past any visibility timeout or retry countdown).
DELIVERY_COUNT_TTL_S = 7 * 24 * 3600


class BatchTask(Task):  # type: ignore[misc]
    """A batch task: Celery's retry, logged with its countdown, and requeued when the retry cannot be published.

    Celery answers a retry it cannot publish with ``Reject(requeue=False)`` — the batch would be gone while its
    images stay ``queued`` forever. Requeueing the original message keeps it (and if even that is impossible, the
    message stays unacknowledged and returns after the visibility timeout).
    """

    def retry(self, *args: Any, exc: BaseException | None = None, countdown: float | None = None, **kwargs: Any) -> Any:
        request = self.request
        run_id = request.args[0] if request.args else request.kwargs.get("run_id")
        log.warning(
            "batch %s of run %s failed (%s: %s); retry %d in %.1fs",
            request.id,
            run_id,
            type(exc).__name__,
            _short(exc),
            int(request.retries or 0) + 1,
            countdown or 0.0,
        )
        try:
            return super().retry(*args, exc=exc, countdown=countdown, **kwargs)
        except Reject as rejected:
            log.error("could not publish the retry (%s); requeueing the message instead", _short(rejected.reason))
            raise Reject(rejected.reason, requeue=True) from exc

    def retry_by_policy(self, exc: BaseException) -> BaseException | None:
        """Retry number ``retries + 1`` after the policy's backoff, with the policy's ``max_retries`` (the settings
        read now); None when the retries are spent. Returns Celery's ``Retry`` to raise."""
        retries = int(self.request.retries or 0)
        countdown = retry_countdown(retries)
        if countdown is None:
            return None
        limit = get_settings().retry_policy.max_retries
        return self.retry(exc=exc, countdown=countdown, max_retries=limit, throw=False)  # type: ignore[no-any-return]


def retry_countdown(retries: int) -> int | None:
    """Seconds before retry ``retries + 1`` of a failed batch under the settings' policy as it is now (a draw
    when it jitters), or None when ``retries`` already reached its ``max_retries``."""
    policy = get_settings().retry_policy
    return policy.delay(retries) if retries < policy.max_retries else None


#: Both batch tasks: late acks, back to the queue when the worker dies; retried by :meth:`BatchTask.retry_by_policy`.
BATCH_TASK_OPTIONS: dict[str, Any] = {"base": BatchTask, "bind": True, "acks_late": True, "reject_on_worker_lost": True}


@app.task(name=SEGMENT_BATCH, **BATCH_TASK_OPTIONS)
def segment_batch(self: BatchTask, run_id: int, keys: list[str]) -> dict[str, Any]:
    """Segment ``keys`` of run ``run_id``; after ``task_max_retries`` failed retries its images are marked failed."""
    from pixelperfect.worker.batch import run_batch

    retries = int(self.request.retries or 0)
    lost = _count_delivery(self) - (retries + 1)  # deliveries that neither finished nor published a retry
    if lost >= MAX_WORKER_LOSSES:
        return _isolate(self, run_id, keys, lost)
    try:
        # node name, e.g. gpu0@host; the task id owns the images' leases (a redelivery or retry keeps it)
        host, lease = self.request.hostname, self.request.id
        return run_batch(run_id, keys, worker_host=host, lease=lease, publish_segs=publish_segs).as_dict()
    except Reject:
        raise
    except Exception as exc:
        retry = self.retry_by_policy(exc)
        if retry is not None:
            raise retry from exc
        log.error(
            "batch %s of run %s failed %d times; marking its images failed: %s",
            self.request.id,
            run_id,
            retries + 1,
            _short(exc),
        )
        from pixelperfect.worker.persist import give_up

        try:
            return give_up(run_id, keys, exc)
        except Exception as db_exc:  # the failure cannot be recorded: keep the batch, try again later
            log.error("cannot record the failed batch of run %s (%s); retrying", run_id, _short(db_exc))
            policy = get_settings().retry_policy  # one retry past the limit: the batch must not be lost
            raise self.retry(exc=db_exc, countdown=policy.delay(retries), max_retries=retries + 1) from db_exc


def publish_segs(run_id: int, image_ids: list[int]) -> None:
    """Hand the DICOM-SEGs of a persisted batch to queue ``seg`` (``pixelperfect.build_segs``). Never raises: the
    batch is persisted, a retry of it would skip its done images; SEGs not published are rebuilt by
    ``pixelperfect retry RUN --seg``."""
    try:
        build_segs.apply_async((run_id, image_ids), argsrepr=f"(run={run_id}, images={len(image_ids)})")
    except Exception as exc:
        log.error("cannot publish the SEGs of %d image(s) of run %s (%s); `pixelperfect retry RUN --seg` builds "
                  "them", len(image_ids), run_id, _short(exc))  # fmt: skip


@app.task(name=BUILD_SEGS, **BATCH_TASK_OPTIONS)
def build_segs(self: BatchTask, run_id: int, image_ids: list[int]) -> dict[str, Any]:
    """Build, store, STOW and record the missing DICOM-SEGs of ``image_ids`` of run ``run_id`` from their stored
    masks (the ``retry --seg`` code path); after ``task_max_retries`` failed retries they stay missing and
    ``pixelperfect retry RUN --seg`` builds them."""
    from pixelperfect.worker.segretry import build_segs as build

    try:
        report = build(run_id, list(image_ids))
    except Reject:
        raise
    except Exception as exc:
        retry = self.retry_by_policy(exc)
        if retry is not None:
            raise retry from exc
        log.error("SEGs of %d image(s) of run %s failed %d times (%s); `pixelperfect retry RUN --seg` builds them",
                  len(image_ids), run_id, int(self.request.retries or 0) + 1, _short(exc))  # fmt: skip
        return {"run_id": run_id, "gave_up": True}
    return {"run_id": run_id, "built": report.rebuilt, "failed": report.failed, "stowed": report.stowed}


def _count_delivery(task: Task) -> int:
    """This delivery's number (1 for the first) for the task id, counted in the Redis broker; a retry keeps the
    task id, so deliveries minus ``retries + 1`` are the ones whose pool process died. 1 without a Redis broker
    or when the count cannot be kept (the batch then runs: counting must never block work)."""
    if not str(task.app.conf.broker_url or "").startswith(("redis://", "rediss://")):
        return 1
    key = f"pixelperfect:deliveries:{task.request.id}"
    try:
        with task.app.pool.acquire(block=True, timeout=10) as conn:
            client = conn.default_channel.client
            count = int(client.incr(key))
            client.expire(key, DELIVERY_COUNT_TTL_S)
            return count
    except Exception as exc:
        log.warning("cannot count the deliveries of task %s (%s)", task.request.id, _short(exc))
        return 1


def _isolate(task: Task, run_id: int, keys: list[str], lost: int) -> dict[str, Any]:
    """After :data:`MAX_WORKER_LOSSES` dead pool processes: one task per image, so the images that do not kill
    their worker finish; a lone image that does is failed (``pixelperfect retry --reason worker_lost`` retries)."""
    if len(keys) > 1:
        log.error(
            "batch %s of run %s lost its pool process %d times; splitting it into %d single-image tasks",
            task.request.id,
            run_id,
            lost,
            len(keys),
        )
        try:
            from pixelperfect.worker.leases import release_keys

            settings = get_settings()  # the new tasks take over:
            release_keys(settings.database_url, run_id, keys, str(task.request.id), ttl_s=settings.visibility_timeout)
            for key in keys:
                segment_batch.apply_async((run_id, [key]), argsrepr=f"(run={run_id}, key={key!r}, isolated)")
        except Exception as exc:
            raise Reject(exc, requeue=True) from exc  # not published: keep this message
        return {"run_id": run_id, "split": len(keys)}
    log.error("image %s of run %s took its pool process down %d times; marking it failed", keys[0], run_id, lost)
    error = RuntimeError(f"the worker's pool process died {lost} times while processing this image")
    from pixelperfect.worker.persist import give_up

    try:
        return give_up(run_id, keys, error, reason="worker_lost")
    except Exception as db_exc:
        raise Reject(db_exc, requeue=True) from db_exc


def _short(exc: BaseException | Any, limit: int = 300) -> str:
    """The first line of an error, bounded: SQL errors carry whole statements and parameter lists."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit]


# A training runs for hours, far past the broker's visibility timeout: with a late ack Redis would hand the same
# training to a second worker while the first still writes to --out. So it is acknowledged on receipt and never
# retried; if its worker dies, `pixelperfect train ... --queue --resume` continues from the last checkpoint.
@app.task(name=TRAIN, bind=True, acks_late=False, reject_on_worker_lost=False)
def train(self: Task, config: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune SAM per ``config`` (``TrainConfig.as_dict()``); progress as ``task-progress`` events."""
    from pixelperfect.training.task import run_training_task

    return run_training_task(self, config)


_sweepers: list[Any] = []


@worker_ready.connect
def _start_orphan_sweep(sender: Any = None, **_: Any) -> None:
    """A worker consuming the gpu queue from a Redis broker sweeps for images whose message was lost
    (worker/sweeper.py), every ``Settings.orphan_sweep_s`` seconds (0: never)."""
    settings = get_settings()
    if settings.orphan_sweep_s <= 0 or not str(settings.broker_url or "").startswith(("redis://", "rediss://")):
        return
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", None) or ()}
    if queues and GPU_QUEUE not in queues:
        return
    from pixelperfect.worker.sweeper import Sweeper

    sweeper = Sweeper(settings, app, segment_batch, GPU_QUEUE, str(getattr(sender, "hostname", "") or "worker"))
    sweeper.start()
    _sweepers.append(sweeper)


@worker_shutdown.connect
def _stop_orphan_sweep(**_: Any) -> None:
    while _sweepers:
        _sweepers.pop().stop()
