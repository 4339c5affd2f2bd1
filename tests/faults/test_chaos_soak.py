"""Chaos soak: several faults at once. Two worker processes on a Redis server, a PostgreSQL server and the S3 server
of the test's own process the run while a seeded schedule SIGKILLs a pool process every 10-30 s, crashes and
restarts Redis once and PostgreSQL once, and has the S3 server answer 10 % of requests with 500/503 for a minute
(or until the run is done, if sooner).

Afterwards: every good image is ``done`` and every bad input mixed in ``failed`` with a reason; no segment row
twice; every mask object present and byte-identical (sha256) to the mask its row describes (the fixed-cost model's
mask is the row's prompt box, so it can be rebuilt); encoder calls beyond one per image (the durable ``model_work``
record) no more than the images in flight at the faults. The figures are printed last, with the images the orphan
sweep published again (a Redis restart can lose a message a worker popped but had not read yet: worker/sweeper.py).

``make test``: 200 images. ``make soak`` (``PP_SOAK=1``): 2,000.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import S3Server
from tests.faults.postgres import PostgresServer
from tests.faults.runs import audit_run, counts, log_count, make_stack, run_id_of, use_broker
from tests.faults.services import FaultPolicy, FaultProxy, RedisServer
from tests.faults.soak import FixedCostSegmenter, SoakWorker, model_work, write_archive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
]

SOAK = os.environ.get("PP_SOAK") == "1"
IMAGES = 2_000 if SOAK else 200
MODEL_S = 0.1 if SOAK else 0.35  # fixed model time per image (sleep): batches long enough to be killed inside
BATCH = 4
BAD = {"bad-truncated.png": None, "bad-text.png": b"this is not an image\n"}


def upload(s3: S3Server, bucket: str, images: Path, labels: Path) -> None:
    client = s3.client()
    data = (images / "img-0000000.png").read_bytes()
    names = sorted(p.name for p in images.iterdir())
    BAD["bad-truncated.png"] = data[: len(data) // 3]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"archive/images/{n}", Body=data), names))
    for name, body in BAD.items():
        client.put_object(Bucket=bucket, Key=f"archive/images/{name}", Body=body)
    client.put_object(Bucket=bucket, Key="archive/labels.csv", Body=labels.read_bytes())


def submit(stack: Any, bucket: str) -> Any:
    from pixelperfect.producer.enqueue import SubmitRequest
    from pixelperfect.producer.enqueue import submit as do_submit

    use_broker(stack.settings)
    req = SubmitRequest(
        source=f"s3://{bucket}/archive/images",
        run="chaos",
        variants=("raw",),
        model="sam_tiny",
        checkpoint="random",
        annotations=f"s3://{bucket}/archive/labels.csv",
        batch_size=BATCH,
    )
    return do_submit(req, stack.settings)


def mask_mismatches(stack: Any, s3: S3Server, run_id: int) -> tuple[int, list[str]]:
    """(masks checked, keys whose object is missing or differs from the mask its row describes)."""
    from sqlalchemy import select

    from pixelperfect.db.models import Image, Segment
    from pixelperfect.db.session import session_scope
    from pixelperfect.pipeline.options import ProcessSettings
    from pixelperfect.pipeline.output.masks import encode_mask_png

    with session_scope(stack.values["database_url"]) as session:
        rows = session.execute(
            select(Segment.prompt, Segment.mask_key, Image.height, Image.width)
            .join(Image, Image.id == Segment.image_id)
            .where(Segment.run_id == run_id)
        ).all()
    model, compression = FixedCostSegmenter(), ProcessSettings().png_compression
    client, bucket = s3.client(), stack.values["store_url"][5:].split("/", 1)[0]

    def check(row: Any) -> str | None:
        key = row.mask_key.split(f"s3://{bucket}/", 1)[1]
        mask = model.predict_boxes((row.height, row.width), np.asarray([row.prompt], np.float64)).masks[0]
        want = hashlib.sha256(encode_mask_png(mask, compression)).hexdigest()
        try:
            got = hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
        except client.exceptions.NoSuchKey:
            return key
        return None if got == want else key

    with ThreadPoolExecutor(8) as pool:
        bad = [k for k in pool.map(check, rows) if k]
    return len(rows), bad


def stuck_rows(url: str, run_id: int) -> list[tuple[Any, ...]]:
    """The run's queued images with their lease and publish time: what a soak that did not finish left behind."""
    from sqlalchemy import select

    from pixelperfect.db.models import Image
    from pixelperfect.db.session import session_scope

    with session_scope(url) as session:
        rows = session.execute(
            select(Image.key, Image.lease_owner, Image.lease_expires, Image.published_at)
            .where(Image.run_id == run_id, Image.status == "queued")
            .limit(20)
        ).all()
    return [tuple(r) for r in rows]


def swept(logs: list[Path]) -> int:
    """Images the workers' orphan sweeps published again (worker/sweeper.py's warning)."""
    pattern = re.compile(r"(\d+) queued image\(s\) had no message in the broker")
    return sum(int(m.group(1)) for log in logs for m in pattern.finditer(log.read_text(errors="replace")))


@pytest.mark.timeout(3600 if SOAK else 600)
def test_chaos_soak_kills_restarts_and_s3_errors_at_once(
    s3_server: S3Server,
    s3_bucket: str,
    private_redis: RedisServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    fault_table,  # type: ignore[no-untyped-def]
) -> None:
    from pixelperfect.db.migrate import upgrade

    t0 = time.monotonic()
    rng = random.Random(2026)
    images, labels, _ = write_archive(tmp_path / "archive", IMAGES)
    upload(s3_server, s3_bucket, images, labels)
    pg = PostgresServer()
    workers: list[SoakWorker] = []
    try:
        pg.start()
        upgrade(pg.url)
        stack = make_stack(s3_server, s3_bucket, private_redis.url, pg.url, visibility_timeout=20,
                           retry_backoff_s=0.5, task_max_retries=5, orphan_sweep_s=5)  # fmt: skip
        result = submit(stack, s3_bucket)
        assert result.pending == IMAGES + len(BAD)
        run_id = run_id_of(pg.url, "chaos")
        env = stack.env(s3_endpoint_url=fault_proxy.endpoint)
        workers = [SoakWorker(env, tmp_path / f"w{i}.log", f"w{i}@%h", MODEL_S) for i in (1, 2)]
        for w in workers:
            w.wait_ready()

        start = time.monotonic()
        next_kill = start + rng.uniform(10, 30)
        redis_at, pg_at = start + rng.uniform(10, 20), start + rng.uniform(25, 40)
        s3_from, s3_until = start + rng.uniform(3, 8), 0.0
        kills, events = 0, []
        status: dict[str, int] = {}
        deadline = start + (1800 if SOAK else 240)
        while time.monotonic() < deadline:
            now = time.monotonic()
            if not s3_until and now >= s3_from:
                fault_proxy.policy = FaultPolicy(rate=0.1, kinds=("500", "503"))
                s3_until = now + 60
                events.append(f"{now - start:.0f}s S3 5xx on")
            if s3_until and now >= s3_until and fault_proxy.policy.rate:
                fault_proxy.policy = FaultPolicy()
                events.append(f"{now - start:.0f}s S3 5xx off")
            if now >= next_kill:
                victim = rng.choice(workers)
                pids = victim.pool_pids()
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                kills += bool(pids)
                events.append(f"{now - start:.0f}s SIGKILL {victim.hostname} pool {pids}")
                next_kill = now + rng.uniform(10, 30)
            if redis_at and now >= redis_at:
                private_redis.restart(down_s=1.0)
                redis_at = 0
                events.append(f"{now - start:.0f}s Redis restarted")
            if pg_at and now >= pg_at:
                pg.restart(down_s=2.0)
                pg_at = 0
                events.append(f"{now - start:.0f}s PostgreSQL restarted")
            try:
                status = counts(pg.url, "chaos")
                backlog = private_redis.backlog()
            except Exception:  # a service is down right now
                time.sleep(0.5)
                continue
            if status["queued"] == 0 and backlog == (0, 0) and not redis_at and not pg_at and s3_until:
                break
            time.sleep(0.25)
        else:
            stuck = stuck_rows(pg.url, run_id)
            raise AssertionError(f"soak not finished: {status}, backlog {private_redis.backlog()}; {events}; {stuck}")
        fault_proxy.policy = FaultPolicy()
        for w in workers:
            w.stop()

        audit = audit_run(stack, s3_server, "chaos", check_masks=False)
        checked, mismatched = mask_mismatches(stack, s3_server, run_id)
        records, distinct = model_work(pg.url, run_id)
        retries = sum(log_count(w.log, r"retry \d+ in") for w in workers)
        lost = sum(log_count(w.log, r"raised error: WorkerLostError") for w in workers)
        orphans = swept([w.log for w in workers])
        wasted = records - audit.done
        # in flight: a killed pool process held one batch; a restart may cost each worker its batch; a task retry
        # (S3 errors beyond boto's retries, the database gone) repeats one batch
        bound = BATCH * (kills + 2 * (private_redis.restarts + pg.restarts) + retries)
        s3_faults = {k: v for k, v in fault_proxy.counts.items() if k != "requests"}
        figures = [
            f"chaos soak: {IMAGES} images + {len(BAD)} bad inputs, 2 workers, wall {time.monotonic() - t0:.0f}s",
            f"faults: {kills} pool SIGKILLs ({lost} WorkerLostError), Redis restarts {private_redis.restarts}, "
            f"PostgreSQL restarts {pg.restarts}, S3 errors {sum(s3_faults.values())} of "
            f"{fault_proxy.counts['requests']} requests {dict(s3_faults)}; {retries} task retries; "
            f"{orphans} images published again by the orphan sweep (their message lost, or popped and not read yet)",
            f"schedule: {'; '.join(events)}",
            f"images: done {audit.done}, failed {audit.failed} "
            f"({sorted({r for r, _ in audit.failures.values()})}), queued {audit.queued}; lost {audit.lost}",
            f"duplicate segment rows {audit.segments - audit.distinct_segments}; duplicates (audit) {audit.duplicates}",
            f"mask objects sha256-equal to their rows: {checked - len(mismatched)}/{checked}",
            f"encoder calls / images = {records}/{audit.done} = {records / max(audit.done, 1):.3f}; "
            f"wasted {wasted} <= in flight at the faults {bound} (a batch of {BATCH} per fault and worker; "
            f"encoder_batch {stack.settings.encoder_batch}, prefetch 1 message per worker, fixed-cost model "
            f"{MODEL_S} s/image)",
        ]
        fault_table.append(("chaos soak", IMAGES, figures[1], audit.lost, audit.duplicates, time.monotonic() - t0))
        print("\n" + "\n".join(figures))
        assert audit.done == IMAGES and audit.failed == len(BAD) and audit.queued == 0, figures
        assert all(reason for reason, _ in audit.failures.values()) and set(audit.failures) == set(BAD)
        assert audit.lost == 0 and audit.duplicates == 0, figures
        assert mismatched == [] and checked == audit.expected_segments == IMAGES, figures
        assert distinct == IMAGES and wasted <= bound, figures
        assert kills >= 1 and private_redis.restarts == 1 and pg.restarts == 1 and s3_faults, figures
    finally:
        for w in workers:
            w.stop()
        pg.remove()
