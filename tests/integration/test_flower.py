"""Flower live against the real Redis broker, a real worker and a real run; the worker's metrics and
``status --watch`` on the same run (moto S3 over HTTP, PostgreSQL)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pixelperfect.broker.names import STAGES
from tests.conftest import PIXELPERFECT, ROOT, S3Server
from tests.integration.live import (
    Flower,
    archive_env,
    host_node,
    listen_ports,
    positive_boxes,
    scrape,
    submit,
    wait_for_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = ("flower-user", "s3cret-pass")


def test_flower_worker_metrics_and_watch_on_a_live_run(
    s3_server: S3Server, s3_bucket: str, redis_url: str, pg_url: str, phantom_dir: Path, tiny_checkpoint: Path,
    start_worker, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:  # fmt: skip
    env = archive_env(s3_server, s3_bucket, redis_url, pg_url, phantom_dir, tiny_checkpoint)
    metrics_port = listen_ports(1)
    start_worker(env | {"PIXELPERFECT_METRICS_PORT": str(metrics_port)}, hostname="flw@%h")
    node = host_node("flw")
    flower = Flower(env, listen_ports(1), tmp_path, AUTH)
    try:
        # the worker is listed (Flower asks it over the broker's control channel)
        workers = flower.wait_until(
            "worker", lambda: (r := flower.get("/api/workers", refresh=1)).ok and node in r.json() and r.json()
        )
        assert [q["name"] for q in workers[node]["active_queues"]] == ["gpu", "seg"]  # a worker's default queues
        assert "pixelperfect.segment_batch" in workers[node]["registered"]
        assert "libtorch" not in flower.loaded_libraries()  # importing the app for Flower stays light
        assert flower.get("/healthcheck", auth=None).status_code == 200  # compose's healthcheck needs no password
        assert flower.get("/api/workers", auth=None).status_code == 401
        assert flower.get("/api/tasks", auth=("flower-user", "wrong")).status_code == 401
        assert flower.get("/api/queues/length", auth=None).status_code == 401

        assert "enqueued 3 batch(es)" in submit(env, s3_bucket, "flow", batch_size=4)
        watch = subprocess.Popen(
            [PIXELPERFECT, "status", "flow", "--watch", "--interval", "0.5", "--max-seconds", "150"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_run(pg_url, "flow")
        watched, watch_err = watch.communicate(timeout=60)
        assert watch.returncode == 0, watch_err

        def succeeded() -> dict | None:  # type: ignore[type-arg]
            tasks = flower.get("/api/tasks").json()
            done = [t for t in tasks.values() if t["state"] == "SUCCESS"]
            return tasks if len(done) == 3 else None

        tasks = flower.wait_until("3 successful tasks", succeeded, timeout=30)
        assert {t["name"] for t in tasks.values()} == {"pixelperfect.segment_batch"}
        assert sorted(t["args"] for t in tasks.values()) == ["(run='flow', keys=4)"] * 3  # not the key list
        assert {t["worker"] for t in tasks.values()} == {node}
        lengths = flower.get("/api/queues/length")
        assert lengths.status_code == 200
        assert lengths.json() == {"active_queues": [{"name": "gpu", "messages": 0}, {"name": "seg", "messages": 0}]}
    finally:
        flower.stop()

    # the worker's Prometheus endpoint (prefork child 0 serves on metrics_port + 0)
    metrics = scrape(metrics_port)
    assert metrics["pixelperfect_images_done_total"] == 12
    assert metrics["pixelperfect_batches_total"] == 3
    assert metrics["pixelperfect_segments_total"] == 2 * positive_boxes(phantom_dir)
    for stage in STAGES:
        assert metrics[f'pixelperfect_image_stage_seconds_count{{stage="{stage}"}}'] == 12
        assert metrics[f'pixelperfect_image_stage_seconds_sum{{stage="{stage}"}}'] >= 0
    info = next(k for k in metrics if k.startswith("pixelperfect_worker_info"))
    assert f'node="{node}"' in info and 'index="0"' in info

    # status --watch ran during the run, one line per refresh, and ended when nothing was queued
    lines = watched.strip().splitlines()
    assert lines[-1].startswith("run flow: 12/12 (100%)") and "ETA 0s" in lines[-1]
    assert "img/s" in lines[-1] and "encode" in lines[-1] and "db" in lines[-1]
