"""Several workers on one queue: two worker processes with their own node names and CUDA_VISIBLE_DEVICES (one a
prefork pool of two children, one a solo pool) share a run; each image is done exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from pixelperfect.db.models import Image, Segment
from tests.conftest import S3Server
from tests.integration.live import archive_env, host_node, listen_ports, positive_boxes, scrape, submit, wait_for_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_share_a_run_and_finish_it_once(
    s3_server: S3Server, s3_bucket: str, redis_url: str, pg_url: str, phantom_dir: Path, tiny_checkpoint: Path,
    start_worker,  # type: ignore[no-untyped-def]
) -> None:  # fmt: skip
    env = archive_env(s3_server, s3_bucket, redis_url, pg_url, phantom_dir, tiny_checkpoint)
    port_a = listen_ports(2)
    port_b = listen_ports(1)
    while port_b in (port_a, port_a + 1):
        port_b = listen_ports(1)
    # A: a prefork pool of two children (metrics on port_a and port_a + 1); B: solo (metrics from its main process)
    a = start_worker(
        env | {"CUDA_VISIBLE_DEVICES": "0", "PIXELPERFECT_METRICS_PORT": str(port_a)},
        hostname="gpuA@%h", extra=["--concurrency", "2"], wait=False,
    )  # fmt: skip
    b = start_worker(
        env | {"CUDA_VISIBLE_DEVICES": "1", "PIXELPERFECT_METRICS_PORT": str(port_b)},
        hostname="gpuB@%h", extra=["--pool", "solo"], wait=False,
    )  # fmt: skip
    a.wait_ready()
    b.wait_ready()

    assert "enqueued 12 batch(es)" in submit(env, s3_bucket, "multi", batch_size=1)
    wait_for_run(pg_url, "multi")

    node_a, node_b = host_node("gpuA"), host_node("gpuB")
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(select(Image.key, Image.status, Image.attempts, Image.worker_host)).all()
        segments = conn.scalar(select(func.count()).select_from(Segment))
        distinct = conn.scalar(
            select(func.count()).select_from(
                select(Segment.image_id, Segment.variant, Segment.prompt_index).distinct().subquery()
            )
        )
    engine.dispose()
    assert len(rows) == 12 and {r.status for r in rows} == {"done"}
    assert {r.attempts for r in rows} == {1}  # every image segmented once: no batch ran twice
    by_node = {node: sum(1 for r in rows if r.worker_host == node) for node in (node_a, node_b)}
    assert sum(by_node.values()) == 12 and min(by_node.values()) >= 1, by_node  # both took batches
    assert segments == distinct == 2 * positive_boxes(phantom_dir)

    # every process that runs tasks serves its own metrics; together they count each image once
    endpoints = {port_a: (node_a, "0", "0"), port_a + 1: (node_a, "0", "1"), port_b: (node_b, "1", "0")}
    done = {}
    for port, (node, cuda, index) in endpoints.items():
        metrics = scrape(port)
        info = next(k for k in metrics if k.startswith("pixelperfect_worker_info"))
        assert f'node="{node}"' in info and f'cuda_visible_devices="{cuda}"' in info and f'index="{index}"' in info
        done[port] = metrics["pixelperfect_images_done_total"]
    assert sum(done.values()) == 12
    assert done[port_a] + done[port_a + 1] == by_node[node_a] and done[port_b] == by_node[node_b]
