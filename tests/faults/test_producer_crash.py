"""Producer crash: ``pixelperfect submit`` of a manifest is SIGKILLed three times at seeded random points while it
registers and publishes, then run again to the end. Every key is registered once and published; two workers with
a zero-cost model then process each image exactly once (the durable ``model_work`` record: one row per image),
and at the end the broker holds no message at all (none for a finished image).

``make test``: 2,000 keys. ``make soak`` (``PP_SOAK=1``): 200,000 keys.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Image
from pixelperfect.db.session import session_scope
from tests.conftest import PIXELPERFECT, ROOT, service_env
from tests.faults.runs import run_id_of
from tests.faults.services import RedisServer
from tests.faults.soak import SoakWorker, model_work, write_archive

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK = os.environ.get("PP_SOAK") == "1"
KEYS = 200_000 if SOAK else 2_000


def progress(database_url: str) -> tuple[int, int]:
    """(images registered, images published) over every run in the database."""
    with session_scope(database_url) as session:
        n, published = session.execute(select(func.count(), func.count(Image.published_at))).one()
    return int(n), int(published)


@pytest.mark.timeout(6 * 3600 if SOAK else 900)
def test_producer_sigkilled_three_times_then_resubmitted_registers_and_processes_each_image_once(
    private_redis: RedisServer, pg_url: str, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    rng = random.Random(15)
    images, labels, manifest = write_archive(tmp_path / "archive", KEYS)
    upgrade(pg_url)
    env = service_env(broker_url=private_redis.url, database_url=pg_url, store_url=f"file://{tmp_path / 'store'}",
                      device="cpu", visibility_timeout="30", retry_backoff_s="0.2")  # fmt: skip
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [PIXELPERFECT, "submit", str(images), "--run", "crash", "--manifest", str(manifest),
           "--annotations", str(labels), "--model", "sam_tiny", "--checkpoint", "random", "--batch-size", "8",
           "--consistency-k", "0"]  # fmt: skip

    # No worker consumes yet. Each producer gets a queue limit of what the queue already holds plus a seeded
    # number of batches short of the rest, so backpressure holds it mid-publish if the kill has not landed before
    # (a fast machine would otherwise publish everything between its first commit and the kill); it is killed at
    # a seeded moment, or a moment after it is held, whichever comes first. The final run has no limit.
    batches = KEYS // 8
    kills = []
    for attempt in range(3):
        published_before = progress(pg_url)[1]
        queued = private_redis.backlog()[0]
        left = max(2, (KEYS - published_before) // 8)
        limit = queued + rng.randint(1, left - 1)
        held = {**env, "PIXELPERFECT_MAX_QUEUED_BATCHES": str(limit)}
        with (tmp_path / f"producer-{attempt}.log").open("wb") as log:
            proc = subprocess.Popen(cmd, env=held, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            kill_at = time.monotonic() + rng.uniform(1.0, 4.0 if not SOAK else 120.0)
            while proc.poll() is None and time.monotonic() < kill_at and private_redis.backlog()[0] < limit:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        kills.append(progress(pg_url))
    assert any(published < KEYS for _, published in kills), f"no kill landed before publishing ended: {kills}"

    unlimited = {**env, "PIXELPERFECT_MAX_QUEUED_BATCHES": str(2 * batches)}
    final = subprocess.run(cmd, env=unlimited, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert final.returncode == 0, final.stderr[-3000:]
    registered, published = progress(pg_url)
    assert registered == KEYS and published == KEYS, (registered, published)
    queued_messages = private_redis.backlog()[0]
    assert queued_messages >= KEYS // 8

    workers = [SoakWorker(env, tmp_path / f"w{i}.log", f"w{i}@%h") for i in (1, 2)]
    try:
        run_id = run_id_of(pg_url, "crash")
        deadline = time.monotonic() + (4 * 3600 if SOAK else 600)
        while time.monotonic() < deadline:
            with session_scope(pg_url) as session:
                done = session.scalar(select(func.count()).where(Image.run_id == run_id, Image.status == "done"))
            if done == KEYS and private_redis.backlog() == (0, 0):
                break
            assert all(w.proc and w.proc.poll() is None for w in workers), (tmp_path / "w1.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError(f"not finished: {done} done, backlog {private_redis.backlog()}")
    finally:
        for w in workers:
            w.stop()
    records, distinct = model_work(pg_url, run_id)
    print(f"\nproducer crash: {KEYS} keys, 3 SIGKILLs at (registered, published) {kills}; {queued_messages} messages "
          f"for {KEYS // 8} batches; encoder calls / images = {records}/{distinct} = {records / KEYS:.3f}; "
          f"wall {time.monotonic() - t0:.0f}s")  # fmt: skip
    assert (records, distinct) == (KEYS, KEYS)
    assert private_redis.backlog() == (0, 0)
