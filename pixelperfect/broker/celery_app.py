"""The Celery application, shared by whoever publishes (the producer, ``retry``, ``train --queue``) and the
workers (``celery -A pixelperfect.worker.app worker -Q gpu`` or ``pixelperfect worker``).

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

import ssl
from typing import Any

from celery import Celery

from pixelperfect.broker.names import GPU_QUEUE, ROUTES
from pixelperfect.config import Settings, get_settings

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
    # the worker's tasks by module name: a worker loads them, a publisher never needs to (it sends by task name)
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
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
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
