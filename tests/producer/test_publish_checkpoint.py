"""The producer stamps ``published_at`` when it registers an image (one write per image, issue 24) and keeps
``Run.publish_checkpoint`` below every stamp whose message is not yet in the broker: the orphan sweep looks only
below it, a re-submit after a crash publishes again what was stamped from it on, and while a real producer is held
by backpressure against a real Redis, every image stamped before the checkpoint is named by a message already
sent."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from pixelperfect.config import Settings, use_settings
from pixelperfect.db import bulk, control, repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Image, Run, utcnow
from pixelperfect.db.session import session_scope
from pixelperfect.producer.enqueue import SubmitRequest, submit
from pixelperfect.producer.stream import REGISTER_CHUNK
from tests.db.test_repo import RUN_FIELDS
from tests.partitions.test_partitions import message_keys

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'pc.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    return str(url)


def _swept(url: str) -> set[str]:
    with session_scope(url) as s:
        return {k for _, _, k in control.orphan_candidates(s, published_before=utcnow() + timedelta(hours=1),
                                                            limit=1000)}  # fmt: skip


def test_the_sweep_looks_only_below_the_checkpoint_and_a_resubmit_republishes_from_it(db_url: str) -> None:
    t0 = utcnow() - timedelta(minutes=10)
    t1 = t0 + timedelta(minutes=5)
    with session_scope(db_url) as s:
        run_id = repo.create_run(s, name="pc", fields=RUN_FIELDS).id
        assert bulk.register_images(s, run_id=run_id, keys=["a", "b"], published_at=t0) == (2, ["a", "b"])
        assert bulk.register_images(s, run_id=run_id, keys=["c", "d"], published_at=t1) == (2, ["c", "d"])
        bulk.register_images(s, run_id=run_id, keys=["e"])  # registered, never stamped
        assert control.open_publishing(s, run_id=run_id, at=t1) is None  # a producer publishing c and d now
    assert _swept(db_url) == {"a", "b"}  # c and d may not have their messages yet; e has none
    with session_scope(db_url) as s:
        assert control.open_publishing(s, run_id=run_id, at=utcnow()) == t1  # it died: the next one is told
        t2 = utcnow()
        # the re-submit: c, d (stamped from the checkpoint on) and e (never stamped) are published again, stamped t2
        got = bulk.register_images(s, run_id=run_id, keys=["a", "b", "c", "d", "e", "f"], unpublished_only=True,
                                   published_at=t2, unpublished_since=t1)  # fmt: skip
        assert got == (1, ["c", "d", "e", "f"])
        stamps = dict(s.execute(select(Image.key, Image.published_at).where(Image.run_id == run_id)).all())
        assert {k for k, v in stamps.items() if control._aware(v) == t2} == {"c", "d", "e", "f"}
        assert control._aware(stamps["a"]) == t0  # backed by its message: left alone
        control.set_publish_checkpoint(s, run_id=run_id, at=None)  # that producer finished
    assert _swept(db_url) == {"a", "b", "c", "d", "e", "f"}


@pytest.mark.timeout(180)
def test_while_backpressure_holds_the_producer_every_stamp_below_the_checkpoint_has_its_message(
    tmp_path: Path, redis_url: str, pg_url: str
) -> None:
    n, limit = REGISTER_CHUNK * 4 + 37, 60  # five chunks of which the odd ones leave 16 keys held; 32 a batch
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"k{i:06d}.png\n" for i in range(n)))
    settings = Settings(broker_url=redis_url, database_url=pg_url, store_url="file:///tmp/pp-unused", batch_size=32,
                        max_queued_batches=limit)  # fmt: skip
    use_settings(settings)
    upgrade(pg_url)
    client = redis.Redis.from_url(redis_url)
    client.delete("gpu")
    sent: set[str] = set()
    checks: list[tuple[int, int]] = []  # (images stamped before the checkpoint, of them without a message)
    stop = threading.Event()

    def check() -> None:
        with session_scope(pg_url) as s:
            run = s.scalar(select(Run).where(Run.name == "held"))
            if run is None or run.publish_checkpoint is None:
                return
            below = s.scalars(
                select(Image.key).where(Image.run_id == run.id, Image.published_at < run.publish_checkpoint)
            ).all()
        queued = {k for raw in client.lrange("gpu", 0, -1) for k in message_keys(raw)}
        checks.append((len(below), len(set(below) - sent - queued)))

    errors: list[BaseException] = []

    def consumer() -> None:  # a slow pool of workers; now and then it checks the invariant
        reader = redis.Redis.from_url(redis_url)
        try:
            while not stop.is_set():
                raw = reader.rpop("gpu")
                if raw is not None:
                    sent.update(message_keys(raw))
                    if len(sent) % 640 < 32:
                        check()
                time.sleep(0.002)
        except BaseException as exc:  # seen by the test, and the queue keeps draining no more
            errors.append(exc)
            raise

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    try:
        result = submit(SubmitRequest(source="file:///a", run="held", variants=["raw"], model="grabcut",
                                      manifest=str(manifest)), settings)  # fmt: skip
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
    assert result.batches == -(-n // 32)
    assert checks and all(missing == 0 for _, missing in checks), checks
    assert max(b for b, _ in checks) >= 2 * REGISTER_CHUNK  # it did move up while the producer ran
    with session_scope(pg_url) as s:
        run = s.scalar(select(Run).where(Run.name == "held"))
        assert run is not None and run.publish_checkpoint is None  # finished: every stamp is backed
        unstamped = s.scalar(select(Image.id).where(Image.run_id == run.id, Image.published_at.is_(None)).limit(1))
        assert unstamped is None
