"""The worker's Celery application: ``celery -A pixelperfect.worker.app worker -Q gpu`` or ``pixelperfect worker``.

The application and its delivery settings are :mod:`pixelperfect.broker.celery_app`'s (late acks, reject on worker
lost, prefetch 1, JSON only, …; docs/architecture.md, "Task"); this module adds what only a worker process needs:
SIGTERM as a cold shutdown with a soft phase, the heavy imports before the pool forks, a fresh runtime and the
metrics exporter in each pool process.
"""

from __future__ import annotations

import logging
import os
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

from celery.signals import worker_init, worker_process_init

from pixelperfect.broker.celery_app import PUBLISH_RETRY_POLICY, app, broker_ssl, broker_transport_options, make_celery
from pixelperfect.broker.names import GPU_QUEUE, SEG_QUEUE, TRAIN_QUEUE
from pixelperfect.version import CODE_VERSION  # read as the worker starts: the code it runs

__all__ = [
    "GPU_QUEUE",
    "PUBLISH_RETRY_POLICY",
    "SEG_QUEUE",
    "TRAIN_QUEUE",
    "app",
    "broker_ssl",
    "broker_transport_options",
    "make_celery",
]


@worker_init.connect
def _preload(**_: Any) -> None:
    """Import the heavy modules (torch, segment-anything, OpenCV, pydicom) once, in the main process, before the
    pool forks: a pool process — the first, or the replacement of one that died — then starts in a fraction of a
    second instead of importing for seconds. Only modules: no model, no CUDA context, no connection is created
    before the fork (runtime.py creates those lazily in each pool process).

    The database engine of this process too (its dialect and driver; no connection): otherwise the orphan sweep's
    thread imports the driver at its first database sweep, and if the main thread unpickles a pool process's
    database error (a retry's exception) at that moment, CPython's import lock fails one of the two imports — the
    main thread's with a ``KeyError('psycopg')``, which the Redis transport takes for a lost broker connection:
    the consumer restarts and terminates the running batch (tests/partitions found it after a heal)."""
    import pixelperfect.pipeline.decode.dicom
    import pixelperfect.worker.batch  # noqa: F401
    from pixelperfect.config import get_settings
    from pixelperfect.db.session import get_engine

    get_engine(get_settings().database_url)

    logging.getLogger(__name__).info("pixelperfect %s", CODE_VERSION)  # runs of other code are refused


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
