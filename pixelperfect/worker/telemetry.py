"""Prometheus metrics of a worker process: images done/failed, per-image stage seconds, GPU memory.

Where the exporter runs (the prefork question). A Celery prefork worker runs tasks in pool children, so the
counters live in the children, not in the parent that Celery starts. We serve them **from each pool child, on
``metrics_port + child index``** (billiard numbers the children 0..concurrency-1 and gives a replacement child the
index of the one it replaces). With the ``solo`` or thread pools the tasks run in the main process, which serves on
``metrics_port`` itself. We chose this over prometheus_client's multiprocess mode because:

- the deployment runs one worker process per GPU (``--concurrency 1``, one container per GPU), so the exporter is
  on ``metrics_port`` exactly, as docker-compose publishes it;
- GPU memory is a property of the process that owns the CUDA context (``torch.cuda.memory_allocated`` is
  per-process), which only the child itself can read at scrape time;
- multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is first imported in the
  parent, a directory wiped at every start, and gauges restricted to its aggregation modes; nothing here needs that.

The cost: with ``--concurrency N`` there are N ports to scrape, and a replaced child starts its counters at zero
(Prometheus' ``rate``/``increase`` treat that as a counter reset). A port already taken (two workers on one host with
the same setting) is logged and skipped; the worker keeps working without metrics.

Metric names (all prefixed ``pixelperfect_``): ``images_done_total``, ``images_failed_total{reason}``,
``segments_total``, ``batches_total``, ``batch_seconds`` (histogram, whole ``run_batch`` wall time),
``image_stage_seconds{stage}`` (histogram of per-image seconds; ``_sum`` is the stage's total seconds),
``gpu_memory_{allocated,reserved,max_allocated}_bytes{device}`` (only while CUDA is initialised in the process) and
``worker_info{node,pid,index,cuda_visible_devices}``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Buckets of per-image stage seconds: 1 ms (a small PNG decode) to 2 min (a huge image encoded on CPU).
STAGE_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
#: Buckets of whole-batch seconds: a batch of 8 takes ~1 s on a GPU and minutes on a CPU.
BATCH_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
PREFIX = "pixelperfect"


class GpuMemoryCollector:
    """Reads CUDA allocator statistics at scrape time, in bytes, per visible device.

    Reports nothing unless torch is already imported and CUDA already initialised in this process: a scrape must
    never be the thing that loads torch or creates a CUDA context (hundreds of MiB on the GPU).
    """

    def describe(self) -> Iterable[Any]:
        return []  # no collect() at registration time (that would touch CUDA from the registering thread)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        families = {
            "allocated": GaugeMetricFamily(
                f"{PREFIX}_gpu_memory_allocated_bytes",
                "Bytes held by live tensors (torch allocator)",
                labels=["device"],
            ),
            "reserved": GaugeMetricFamily(
                f"{PREFIX}_gpu_memory_reserved_bytes",
                "Bytes reserved by the torch caching allocator",
                labels=["device"],
            ),
            "max_allocated": GaugeMetricFamily(
                f"{PREFIX}_gpu_memory_max_allocated_bytes", "Peak bytes held by tensors since start", labels=["device"]
            ),
        }
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            families["allocated"].add_metric([device], float(torch.cuda.memory_allocated(index)))
            families["reserved"].add_metric([device], float(torch.cuda.memory_reserved(index)))
            families["max_allocated"].add_metric([device], float(torch.cuda.max_memory_allocated(index)))
        yield from families.values()


class WorkerMetrics:
    """The metric objects of one process, registered on ``registry`` (the global one unless a test passes its own)."""

    def __init__(self, registry: Any | None = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram, Info

        self.registry = REGISTRY if registry is None else registry
        reg = self.registry
        self.images_done = Counter(f"{PREFIX}_images_done", "Images segmented and stored", registry=reg)
        self.images_failed = Counter(
            f"{PREFIX}_images_failed", "Images that ended failed, by reason", ["reason"], registry=reg
        )
        self.segments = Counter(f"{PREFIX}_segments", "Segment rows written (prompt x variant)", registry=reg)
        self.batches = Counter(f"{PREFIX}_batches", "Batches processed by run_batch", registry=reg)
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_seconds", "Wall time of run_batch", buckets=BATCH_BUCKETS, registry=reg
        )
        self.stage_seconds = Histogram(
            f"{PREFIX}_image_stage_seconds",
            "Seconds one image spent in a stage (its share where a stage is batched)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.info = Info(f"{PREFIX}_worker", "The worker process serving these metrics", registry=reg)
        reg.register(GpuMemoryCollector())

    def observe_batch(
        self,
        *,
        done: int,
        failures: Mapping[str, str],
        segments: int,
        timings: Sequence[Mapping[str, float]],
        seconds: float,
    ) -> None:
        """Count one batch. ``failures``: image key -> reason; ``timings``: one stage->seconds dict per done image."""
        self.batches.inc()
        self.batch_seconds.observe(seconds)
        if done:
            self.images_done.inc(done)
        if segments:
            self.segments.inc(segments)
        for reason in failures.values():
            self.images_failed.labels(reason=reason).inc()
        for image in timings:
            for stage, value in image.items():
                self.stage_seconds.labels(stage=stage).observe(float(value))


_LOCK = threading.Lock()
_METRICS: WorkerMetrics | None = None
_SERVED: dict[int, int] = {}  # pid -> port this process serves on


def get_metrics() -> WorkerMetrics:
    """This process's metrics on the global registry (created on first use; a forked child inherits none in use)."""
    global _METRICS
    with _LOCK:
        if _METRICS is None:
            _METRICS = WorkerMetrics()
        return _METRICS


def observe_batch(
    *,
    done: int,
    failures: Mapping[str, str],
    segments: int,
    timings: Sequence[Mapping[str, float]],
    seconds: float,
) -> None:
    """The hook ``run_batch`` calls once per batch. Never raises: metrics must not fail a batch."""
    try:
        get_metrics().observe_batch(done=done, failures=failures, segments=segments, timings=timings, seconds=seconds)
    except Exception:  # pragma: no cover - defensive: a metrics bug must not turn into a batch retry
        log.exception("recording batch metrics failed")


def serve(port: int, *, node: str = "", index: int = 0, addr: str = "0.0.0.0") -> int | None:
    """Serve this process's metrics over HTTP on ``port + index`` (a daemon thread); returns the port or ``None``.

    ``addr`` 0.0.0.0 because Prometheus scrapes from another container or host. Idempotent per process.
    """
    if not 0 < port + index < 65536:
        raise ValueError(f"metrics port {port} + index {index} is not a TCP port")
    pid = os.getpid()
    if pid in _SERVED:
        return _SERVED[pid]
    from prometheus_client import start_http_server

    metrics = get_metrics()
    metrics.info.info(
        {
            "node": node,
            "pid": str(pid),
            "index": str(index),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        }
    )
    try:
        start_http_server(port + index, addr=addr, registry=metrics.registry)
    except OSError as exc:
        log.warning("metrics not served: port %d is not free (%s); set PIXELPERFECT_METRICS_PORT", port + index, exc)
        return None
    _SERVED[pid] = port + index
    log.info("metrics of %s (pid %d) on http://%s:%d/metrics", node or "worker", pid, addr, port + index)
    return port + index


def pool_index() -> int:
    """This prefork child's index (0..concurrency-1), or 0 outside a billiard pool."""
    from billiard.process import current_process

    return int(getattr(current_process(), "index", 0) or 0)


def start_in_pool_child(hostname: str) -> int | None:
    """``worker_process_init`` hook: a prefork child serves on ``metrics_port + index``."""
    from pixelperfect.config import get_settings

    port = get_settings().metrics_port
    if port is None:
        return None
    return serve(port, node=hostname, index=pool_index())


def start_in_main_process(worker: Any) -> int | None:
    """``worker_init`` hook: with a pool that runs tasks in this process (solo, threads), serve from here."""
    from celery import concurrency
    from celery.concurrency.prefork import TaskPool as PreforkPool

    from pixelperfect.config import get_settings

    port = get_settings().metrics_port
    if port is None:
        return None
    pool_cls = concurrency.get_implementation(worker.pool_cls)
    if isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool):
        return None  # the children serve (start_in_pool_child)
    return serve(port, node=str(getattr(worker, "hostname", "")), index=0)
