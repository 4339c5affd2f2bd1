"""The Celery application. ``celery -A pixelperfect.worker.app worker -Q gpu`` or ``pixelperfect worker``.

Delivery semantics (docs/architecture.md, "Task"), each one exercised by ``tests/faults``:

- late acks: a message is acknowledged only after its batch finished, so a batch is never lost with its worker;
- reject on worker lost: a pool process killed mid-batch (OOM, SIGKILL) puts its message straight back;
- prefetch 1: each worker process reserves one batch at a time, so a dead worker holds at most one;
- visibility timeout (``Settings.visibility_timeout``): a message whose worker died with its main process, or lost
  the broker connection, returns to the queue after that many seconds (see config.py for how to choose it);
- SIGTERM is a cold shutdown with a soft phase (``REMAP_SIGTERM=SIGQUIT``): the in-flight batch gets
  ``worker_soft_shutdown_timeout`` seconds to finish, then it is cancelled and its message goes back to the queue;
- on broker connection loss the running batch is cancelled (it cannot be acknowledged any more and will be
  delivered again), instead of finishing in the background while its message is handed out a second time;
- JSON only: a pickle message is refused before it is deserialised, so a message cannot run code in a worker.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from typing import Any

# Must be set before billiard is imported (celery imports it lazily): SIGTERM — what docker, systemd and Kubernetes
# send — becomes Celery's cold shutdown with a soft phase, not a warm shutdown that waits for the batch forever and
# ends with the supervisor's SIGKILL (after which the message waits out the visibility timeout).
os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
if "worker" in sys.argv and getattr(sys.modules.get("billiard.common"), "REMAP_SIGTERM", "SIGQUIT") != "SIGQUIT":
    logging.getLogger(__name__).warning(
        "SIGTERM will wait for the running batch without limit: start `celery ... worker` with "
        "REMAP_SIGTERM=SIGQUIT in the environment (`pixelperfect worker` sets it itself)"
    )

from celery import Celery
from celery.signals import worker_init, worker_process_init

from pixelperfect.config import Settings, get_settings

GPU_QUEUE = "gpu"
TRAIN_QUEUE = "train"
#: DICOM-SEG building (``pixelperfect.build_segs``), off the GPU worker's critical path.
SEG_QUEUE = "seg"

#: A publish (submit, retry, a task's own retry) rides out a broker restart of up to ~30 s: 20 tries, 0.5 s apart
#: growing to 2 s.
PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 2.0}
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport options derived from the settings.

    ``unacked_restore_interval`` × ``unacked_restore_throttle`` is how often a worker looks for messages older
    than the visibility timeout (kombu's default is every 100 s); a tenth of the timeout, at most a minute, keeps
    recovery close to the timeout at one cheap sorted-set query per interval.
    """
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": max(1.0, min(60.0, settings.visibility_timeout / 10)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5,  # a reconnect to a broker that is down fails fast and is retried
        "socket_keepalive": True,
    }


def broker_ssl(settings: Settings) -> dict[str, Any] | None:
    """``broker_use_ssl`` for ``rediss://`` URLs (None otherwise): certificate checking and files from settings."""
    if not (settings.broker_url or "").startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[settings.broker_ssl_cert_reqs]}
    for name in ("ca_certs", "certfile", "keyfile"):
        value = getattr(settings, f"broker_ssl_{name}")
        if value:
            options[f"ssl_{name}"] = value
    return options


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("pixelperfect", broker=settings.broker_url or "memory://", include=["pixelperfect.worker.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],  # never pickle: a message must not be able to run code in the worker
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=GPU_QUEUE,
        task_routes={
            "pixelperfect.segment_batch": {"queue": GPU_QUEUE},
            "pixelperfect.train": {"queue": TRAIN_QUEUE},
            "pixelperfect.build_segs": {"queue": SEG_QUEUE},
        },
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        task_track_started=True,
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=broker_transport_options(settings),
        broker_use_ssl=broker_ssl(settings),
        # with late acks a task running while the broker connection drops would otherwise run twice
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        # an idle worker stops at once: retries waiting for their countdown are held unacked and go back to the
        # queue when the channel closes, they need no soft phase (tests/faults/test_shutdown.py)
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        broker_heartbeat=0,
    )
    return app


app = make_celery()


@worker_init.connect
def _preload(**_: Any) -> None:
    """Import the heavy modules (torch, segment-anything, OpenCV, pydicom) once, in the main process, before the
    pool forks: a pool process — the first, or the replacement of one that died — then starts in a fraction of a
    second instead of importing for seconds. Only modules: no model, no CUDA context, no connection is created
    before the fork (runtime.py creates those lazily in each pool process)."""
    import pixelperfect.pipeline.decode.dicom
    import pixelperfect.worker.batch  # noqa: F401


@worker_process_init.connect
def _after_fork(sender: Any = None, **_: Any) -> None:
    from pixelperfect.worker.runtime import reset_after_fork
    from pixelperfect.worker.telemetry import start_in_pool_child

    reset_after_fork()
    start_in_pool_child(str(sender or ""))  # prefork: each child serves metrics on metrics_port + its index


@worker_init.connect
def _serve_metrics_from_main(sender: Any = None, **_: Any) -> None:
    from pixelperfect.worker.telemetry import start_in_main_process

    start_in_main_process(sender)  # solo/threads pools run tasks here, so this process serves; prefork: no-op
