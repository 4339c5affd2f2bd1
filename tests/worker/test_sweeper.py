"""The orphan sweep on a real Redis and both SQL dialects: only queued, unleased images of active runs that were
published long enough ago and that no message in the broker names (waiting or unacknowledged) are published again,
in batches, once; nothing happens while the queue holds messages."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from pixelperfect.config import Settings
from pixelperfect.db import control, repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Image, RunState, utcnow
from pixelperfect.db.session import session_scope
from pixelperfect.worker.app import GPU_QUEUE, make_celery
from pixelperfect.worker.sweeper import SWEEP_LOCK, sweep_once, unacked_keys
from tests.db.test_control import _claim, _run

pytestmark = pytest.mark.integration

TASK = "pixelperfect.segment_batch"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sweep.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    return str(url)


@pytest.fixture
def broker(redis_url: str) -> Iterator[Any]:
    """A Celery app on the real Redis and a channel of it, the queue, unacked set and lock emptied."""
    app = make_celery(Settings(broker_url=redis_url))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        client.delete(GPU_QUEUE, channel.unacked_key, channel.unacked_index_key, SWEEP_LOCK)
        yield app, channel
        client.delete(GPU_QUEUE, channel.unacked_key, channel.unacked_index_key, SWEEP_LOCK)


def queued_messages(channel: Any) -> list[tuple[int, list[str]]]:
    out = []
    for raw in channel.client.lrange(GPU_QUEUE, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((int(args[0]), list(args[1])))
    return sorted(out)


def test_only_images_no_message_names_are_published_again_once(db_url: str, broker: Any) -> None:
    app, channel = broker
    settings = Settings(database_url=db_url, broker_url="redis://unused", batch_size=2, orphan_sweep_s=30)
    keys = ("leased", "done", "unacked", "fresh", "unpublished", "o1", "o2", "o3")
    run_id = _run(db_url, keys=keys)
    other = _run(db_url, name="cancelled", keys=("c1",))
    with session_scope(db_url) as s:
        control.mark_published(s, run_id=run_id, keys=[k for k in keys if k != "unpublished"])
        control.mark_published(s, run_id=other, keys=["c1"])
        hour_ago = utcnow() - timedelta(hours=1)
        old = update(Image).where(Image.key != "fresh", Image.published_at.is_not(None))
        s.execute(old.values(published_at=hour_ago))
        done = repo.images_by_key(s, run_id=run_id, keys=["done"])["done"]
        repo.mark_done(s, image_id=done.id, segments=[], fields={})
        control.set_run_state(s, run_id=other, state=RunState.cancelled)
    assert _claim(db_url, run_id, ["leased"], "task-1") == ["leased"]

    def publish(rid: int, batch: list[str]) -> None:
        app.send_task(TASK, args=(rid, batch), queue=GPU_QUEUE)

    # a message naming "unacked" was taken by a worker and not acknowledged yet (kombu's own bookkeeping)
    publish(run_id, ["unacked"])
    assert sweep_once(settings, channel, publish, queue=GPU_QUEUE) == 0  # the queue is not empty: no sweep
    taken = channel.basic_get(GPU_QUEUE, no_ack=False)
    assert taken is not None and unacked_keys(channel.client.hvals(channel.unacked_key)) == {run_id: {"unacked"}}

    assert sweep_once(settings, channel, publish, queue=GPU_QUEUE) == 3
    assert queued_messages(channel) == [(run_id, ["o1", "o2"]), (run_id, ["o3"])]
    with session_scope(db_url) as s:
        fresh = repo.images_by_key(s, run_id=run_id, keys=["o1", "o2", "o3"])
        recent = (utcnow() - timedelta(minutes=1)).replace(tzinfo=None)
        assert all(row.published_at and row.published_at.replace(tzinfo=None) > recent for row in fresh.values())

    channel.client.delete(GPU_QUEUE, SWEEP_LOCK)  # the messages were consumed, the next interval came
    assert sweep_once(settings, channel, publish, queue=GPU_QUEUE) == 0  # published just now: not orphans yet
    assert queued_messages(channel) == []


def test_one_sweeper_per_interval(db_url: str, broker: Any) -> None:
    _, channel = broker
    settings = Settings(database_url=db_url, broker_url="redis://unused", orphan_sweep_s=30)
    run_id = _run(db_url, keys=("a",))
    with session_scope(db_url) as s:
        control.mark_published(s, run_id=run_id, keys=["a"])
        s.execute(update(Image).values(published_at=utcnow() - timedelta(hours=1)))
    published: list[tuple[int, list[str]]] = []
    channel.client.set(SWEEP_LOCK, "w2@host", ex=30)  # another worker sweeps this interval
    assert sweep_once(settings, channel, lambda r, k: published.append((r, k)), queue=GPU_QUEUE) == 0
    channel.client.delete(SWEEP_LOCK)
    assert sweep_once(settings, channel, lambda r, k: published.append((r, k)), queue=GPU_QUEUE) == 1
    assert published == [(run_id, ["a"])]
    assert channel.client.ttl(SWEEP_LOCK) > 0


def test_unacked_keys_ignores_other_tasks_and_unreadable_values() -> None:
    def value(task: str, args: list[Any]) -> str:
        body = base64.b64encode(json.dumps([args, {}, {}]).encode()).decode()
        message = {"body": body, "headers": {"task": task}, "properties": {"body_encoding": "base64"}}
        return json.dumps([message, "gpu", "gpu"])

    raw = [value(TASK, [7, ["a", "b"]]), value("pixelperfect.build_segs", [7, [1, 2]]), "not json", "[{}]"]
    assert unacked_keys(raw) == {7: {"a", "b"}}


def test_the_main_process_has_its_engine_before_the_sweep_thread_starts(pg_url: str) -> None:
    """``worker_init`` makes the main process's engine (dialect and driver imported, nothing connected), so the sweep
    thread's first database sweep never imports the driver while the main thread unpickles a pool process's
    database error: that import race ended in ``KeyError('psycopg')`` in the main thread, which the Redis transport
    takes for a lost connection (tests/partitions, after a heal)."""
    import os
    import sys

    from pixelperfect.config import use_settings
    from pixelperfect.db import session as db_session
    from pixelperfect.worker import app

    use_settings(Settings(database_url=pg_url))
    app._preload()
    engine = db_session._ENGINES.get((os.getpid(), pg_url))
    assert engine is not None and "psycopg" in sys.modules
    assert engine.pool.checkedout() == 0  # no connection made before the fork
