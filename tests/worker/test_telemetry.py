"""The worker's Prometheus exporter, in-process: metric values, the HTTP endpoint, where it is served, GPU memory."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pixelperfect.broker.names import STAGES
from pixelperfect.config import Settings, use_settings
from pixelperfect.worker import telemetry as metrics
from pixelperfect.worker.telemetry import GpuMemoryCollector, WorkerMetrics
from tests.conftest import ROOT, free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_observe_batch_counts_images_failures_and_stage_seconds() -> None:
    m = WorkerMetrics(CollectorRegistry())
    timings = [dict.fromkeys(STAGES, 0.01) | {"encode": 0.2}, dict.fromkeys(STAGES, 0.03) | {"encode": 0.4}]
    m.observe_batch(
        done=2, failures={"a.png": "missing", "b.dcm": "decode_error"}, segments=6, timings=timings, seconds=1.5
    )
    m.observe_batch(done=0, failures={"c.png": "missing"}, segments=0, timings=[], seconds=0.2)
    text = generate_latest(m.registry).decode()
    assert "pixelperfect_images_done_total 2.0" in text
    assert 'pixelperfect_images_failed_total{reason="missing"} 2.0' in text
    assert 'pixelperfect_images_failed_total{reason="decode_error"} 1.0' in text
    assert "pixelperfect_segments_total 6.0" in text
    assert "pixelperfect_batches_total 2.0" in text
    assert "pixelperfect_batch_seconds_count 2.0" in text and "pixelperfect_batch_seconds_sum 1.7" in text
    for stage in STAGES:
        assert f'pixelperfect_image_stage_seconds_count{{stage="{stage}"}} 2.0' in text
    assert 'pixelperfect_image_stage_seconds_sum{stage="encode"} 0.6' in text
    assert 'pixelperfect_image_stage_seconds_bucket{le="0.25",stage="encode"} 1.0' in text
    assert "gpu_memory" not in text  # no CUDA in this process


def test_gpu_collector_never_imports_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert list(GpuMemoryCollector().collect()) == []
    assert "torch" not in sys.modules


def test_serve_exposes_metrics_and_worker_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_SERVED", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    port = free_port()
    assert metrics.serve(port - 2, node="gpu3@box", index=2, addr="127.0.0.1") == port  # port + index
    assert metrics.serve(port + 7, node="again") == port  # once per process
    metrics.observe_batch(done=4, failures={}, segments=8, timings=[{"download": 0.1}], seconds=0.5)
    text = _scrape(port)
    assert 'pixelperfect_worker_info{cuda_visible_devices="3",index="2",node="gpu3@box"' in text
    assert "pixelperfect_images_done_total" in text and "pixelperfect_image_stage_seconds_count" in text
    assert "process_cpu_seconds_total" in text  # the default registry's process collector comes along


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_serve_on_a_busy_port_warns_and_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_SERVED", {})
    records = _Records()
    logging.getLogger("pixelperfect.worker.telemetry").addHandler(records)
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            assert metrics.serve(port, addr="127.0.0.1") is None
    finally:
        logging.getLogger("pixelperfect.worker.telemetry").removeHandler(records)
    assert any(f"port {port} is not free" in m for m in records.messages), records.messages
    with pytest.raises(ValueError, match="not a TCP port"):
        metrics.serve(65535, index=1)


def test_main_process_serves_only_for_pools_without_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_SERVED", {})
    assert metrics.start_in_main_process(SimpleNamespace(pool_cls="solo", hostname="x@h")) is None  # no port set
    port = free_port()
    use_settings(Settings(metrics_port=port))
    assert metrics.start_in_main_process(SimpleNamespace(pool_cls="prefork", hostname="x@h")) is None
    assert metrics.start_in_main_process(SimpleNamespace(pool_cls="solo", hostname="solo@h")) == port
    assert 'node="solo@h"' in _scrape(port)
    assert metrics.pool_index() == 0  # not a billiard pool child


def test_flower_side_imports_stay_light() -> None:
    """Flower (and `celery inspect`) import the app and its task modules; that must not pull in torch or cv2."""
    code = (
        "import sys, pixelperfect.worker.app as a; a.app.loader.import_default_modules(); a.app.finalize(); "
        "assert 'pixelperfect.segment_batch' in a.app.tasks; "
        "print(sorted(m for m in ('torch', 'cv2', 'segment_anything', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
def test_gpu_memory_gauges_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB
    m = WorkerMetrics(CollectorRegistry())
    text = generate_latest(m.registry).decode()
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pixelperfect_gpu_memory") and 'device="cuda:0"' in line
    }
    assert values["pixelperfect_gpu_memory_allocated_bytes"] >= 64 * 2**20
    assert values["pixelperfect_gpu_memory_reserved_bytes"] >= values["pixelperfect_gpu_memory_allocated_bytes"]
    assert values["pixelperfect_gpu_memory_max_allocated_bytes"] >= 64 * 2**20
    del block
