"""The Celery application. ``celery -A pixelperfect.worker.app worker -Q gpu`` or ``pixelperfect worker``.

Delivery semantics (DESIGN.md "Task"): a task is acknowledged only after it finished (late acks) and goes back
to the queue if its worker process dies (reject on worker lost); each worker process reserves one task at a time
(prefetch 1), so a killed worker loses at most the batch it was running — and that batch is redelivered.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from pixelperfect.config import get_settings, redact_url

GPU_QUEUE = "gpu"
TRAIN_QUEUE = "train"


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("pixelperfect", broker=settings.broker_url or "memory://", include=["pixelperfect.worker.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle: a message must not be able to run code in the worker
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=GPU_QUEUE,
        task_routes={
            "pixelperfect.segment_batch": {"queue": GPU_QUEUE},
            "pixelperfect.train": {"queue": TRAIN_QUEUE},
        },
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Redis redelivers unacknowledged tasks after this; it must exceed the longest batch (see config.py).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        # with late acks a task running while the broker connection drops would otherwise run twice
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
        broker_heartbeat=0,
    )
    return app


app = make_celery()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    from pixelperfect.worker.runtime import reset_after_fork

    reset_after_fork()


def describe_broker() -> str:
    return redact_url(get_settings().broker_url) or "(embedded: no broker)"
