"""The producer at scale on the real services: 100k keys from a manifest into PostgreSQL and Redis, bounded
memory, and backpressure against a real Redis queue that a consumer drains."""

from __future__ import annotations

import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from pixelperfect.broker.celery_app import app  # the Celery app is built now, with no broker configured
from pixelperfect.config import Settings, use_settings
from pixelperfect.db import repo
from pixelperfect.db.session import session_scope
from pixelperfect.producer.enqueue import SubmitRequest, submit
from pixelperfect.producer.stream import REGISTER_CHUNK

pytestmark = pytest.mark.integration


def _settings(redis_url: str, pg_url: str, **extra: object) -> Settings:
    settings = Settings(broker_url=redis_url, database_url=pg_url, store_url="file:///tmp/pp-unused", **extra)
    use_settings(settings)
    return settings


def _queue(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.delete("gpu")
    return client


@pytest.mark.slow
def test_100k_keys_stream_into_postgres_and_redis(tmp_path: Path, redis_url: str, pg_url: str) -> None:
    n = 100_000
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("# an inventory export\n" + "".join(f"img/{i // 1000:03d}/{i:07d}.dcm\n" for i in range(n)))
    settings = _settings(redis_url, pg_url, batch_size=32, max_queued_batches=10_000)
    queue = _queue(redis_url)
    req = SubmitRequest(source="file:///archive", run="big", variants=["raw"], model="grabcut",
                        manifest=str(manifest))  # fmt: skip
    assert app.conf.broker_url != redis_url  # the producer must publish to the settings' broker
    tracemalloc.start()
    t0 = time.perf_counter()
    result = submit(req, settings)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (result.images, result.new_images, result.pending, result.batches) == (n, n, n, -(-n // 32))
    assert queue.llen("gpu") == result.batches
    # memory: one chunk of keys and rows at a time; the whole list of 100k keys and rows would be far above this
    assert peak < 40e6, f"producer peak traced memory {peak / 1e6:.1f} MB"
    assert n > REGISTER_CHUNK
    assert n / seconds > 2000, f"{n / seconds:.0f} keys/s"  # ~40k/s here untraced; tracemalloc slows it ~3x

    again = submit(req, settings)  # resume: nothing new, and every queued image already has its message
    assert (again.new_images, again.pending) == (0, 0) and queue.llen("gpu") == result.batches
    queue.delete("gpu")  # the broker lost its data: --republish publishes every queued image again
    again = submit(replace(req, republish=True), settings)
    assert (again.new_images, again.pending) == (0, n) and queue.llen("gpu") == result.batches
    with session_scope(pg_url) as session:
        run_id = repo.get_run(session, name="big").id  # type: ignore[union-attr]
        assert repo.status_counts(session, run_id=run_id)["queued"] == n


@pytest.mark.timeout(120)
def test_backpressure_holds_the_redis_queue_below_the_limit(tmp_path: Path, redis_url: str, pg_url: str) -> None:
    n, limit = 3000, 20  # 300 batches of 10 against a limit of 20 queued batches
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"k{i:05d}.png\n" for i in range(n)))
    settings = _settings(redis_url, pg_url, batch_size=10, max_queued_batches=limit)
    queue = _queue(redis_url)
    seen: list[int] = []
    taken = [0]
    stop = threading.Event()

    def consumer() -> None:  # a slow worker pool: takes one message every few milliseconds
        client = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            seen.append(int(client.llen("gpu")))
            if client.rpop("gpu") is not None:
                taken[0] += 1
            time.sleep(0.003)

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    try:
        result = submit(SubmitRequest(source="file:///a", run="bp", variants=["raw"], model="grabcut",
                                      manifest=str(manifest)), settings)  # fmt: skip
    finally:
        stop.set()
        thread.join(5)
    assert result.batches == 300
    assert max(seen) <= limit, max(seen)  # never more than the limit waiting
    assert taken[0] + queue.llen("gpu") == 300  # nothing lost while paused
    assert taken[0] >= 300 - limit  # the producer had to wait for the consumer to get through
