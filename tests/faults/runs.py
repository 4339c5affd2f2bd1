"""What every fault test does: upload a phantom archive, submit through the real producer, watch a real
``pixelperfect worker`` and audit the outcome (nothing lost, nothing twice, every mask row backed by an intact
object)."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pixelperfect.config import Settings, use_settings
from tests.conftest import S3Server, service_env

# --- an archive, a run, a worker, an audit ----------------------------------------------------------------------


@dataclass
class Archive:
    bucket: str
    images: list[str]  # keys under s3://bucket/archive/images
    boxes: dict[str, int]  # image stem -> number of boxes
    checkpoint_url: str

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/archive/images"

    @property
    def labels(self) -> str:
        return f"s3://{self.bucket}/archive/labels.csv"


def make_archive(s3: S3Server, bucket: str, phantoms: Path, checkpoint: Path, n: int | None = None) -> Archive:
    client = s3.client()
    paths = sorted((phantoms / "images").iterdir())[:n]
    keys = []
    for path in paths:
        key = f"archive/images/{path.name}"
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        keys.append(key)
    stems = {p.stem for p in paths}
    rows = [r for r in csv.DictReader((phantoms / "labels.csv").open()) if r["patientId"] in stems]
    boxes = Counter(r["patientId"] for r in rows if r["Target"] == "1")
    text = "patientId,x,y,width,height,Target\n" + "".join(
        f"{r['patientId']},{r['x']},{r['y']},{r['width']},{r['height']},{r['Target']}\n" for r in rows
    )
    client.put_object(Bucket=bucket, Key="archive/labels.csv", Body=text.encode())
    client.put_object(Bucket=bucket, Key="models/sam_tiny.pth", Body=checkpoint.read_bytes())
    return Archive(bucket, keys, {s: boxes.get(s, 0) for s in stems}, f"s3://{bucket}/models/sam_tiny.pth")


@dataclass
class Stack:
    """The settings every process of one fault test shares, as ``Settings`` (producer) and an env (worker)."""

    values: dict[str, Any]
    s3_env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return Settings(**self.values)

    def env(self, **overrides: Any) -> dict[str, str]:
        values = {**self.values, **overrides}
        env = service_env(**{k: str(v) for k, v in values.items() if v is not None}) | self.s3_env
        env["PYTHONUNBUFFERED"] = "1"  # the tests read the worker log as it happens
        return env


def make_stack(s3: S3Server, bucket: str, broker_url: str, database_url: str, **values: Any) -> Stack:
    base: dict[str, Any] = {
        "broker_url": broker_url,
        "database_url": database_url,
        "store_url": f"s3://{bucket}/results",
        "s3_endpoint_url": s3.endpoint,
        "model": "sam_tiny",
        "device": "cpu",
        "retry_backoff_s": 0,  # Celery's backoff counts whole seconds (>= 1 s): these tests retry at once
        "task_max_retries": 4,
        "visibility_timeout": 8,
        "worker_soft_shutdown_timeout": 3.0,
    }
    return Stack({**base, **values}, dict(s3.env))


def use_broker(settings: Settings) -> None:
    """Point this process's Celery app (the producer's) at ``settings.broker_url``: tests own several brokers."""
    from kombu import pools

    from pixelperfect.worker.app import app, broker_ssl, broker_transport_options

    use_settings(settings)
    if app.conf.broker_url == settings.broker_url:
        return
    app.conf.broker_url = settings.broker_url
    app.conf.broker_transport_options = broker_transport_options(settings)
    app.conf.broker_use_ssl = broker_ssl(settings)
    pools.reset()  # drop the connection pools to the previous test's broker
    app._pool = None
    app.amqp._producer_pool = None


def submit_run(
    stack: Stack,
    archive: Archive,
    run: str,
    *,
    batch_size: int = 4,
    variants: tuple[str, ...] = ("raw",),
    source: str | None = None,
    checkpoint: str | None = None,
) -> Any:
    """The real producer (``producer.enqueue.submit``), in this process, publishing to the test's broker."""
    from pixelperfect.producer.enqueue import SubmitRequest, submit

    settings = stack.settings
    use_broker(settings)
    req = SubmitRequest(
        source=source or archive.source,
        run=run,
        variants=variants,
        model="sam_tiny",
        checkpoint=checkpoint or archive.checkpoint_url,
        annotations=archive.labels,
        batch_size=batch_size,
    )
    return submit(req, settings)


def run_id_of(database_url: str, run: str) -> int:
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope

    with session_scope(database_url) as session:
        row = repo.get_run(session, name=run)
        assert row is not None, run
        return row.id


def counts(database_url: str, run: str) -> dict[str, int]:
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope

    with session_scope(database_url) as session:
        row = repo.get_run(session, name=run)
        assert row is not None
        return repo.status_counts(session, run_id=row.id)


def wait_drained(database_url: str, run: str, workers: list[Any], timeout: float = 90) -> dict[str, int]:
    """Poll until no image of ``run`` is queued; fail early (with the log) if every worker died."""
    deadline = time.monotonic() + timeout
    status: dict[str, int] = {}
    while time.monotonic() < deadline:
        status = counts(database_url, run)
        if status["queued"] == 0:
            return status
        if workers and all(w.proc.poll() is not None for w in workers):
            raise AssertionError(f"all workers exited; {status}\n{workers[-1].log.read_text()[-4000:]}")
        time.sleep(0.25)
    logs = "\n".join(w.log.read_text(errors="replace")[-3000:] for w in workers)
    raise AssertionError(f"run {run} not drained after {timeout}s: {status}\n{logs}")


@dataclass
class Audit:
    """What a finished run looks like in the database and the store."""

    images: int
    done: int
    failed: int
    queued: int
    segments: int  # rows
    distinct_segments: int  # distinct (image, variant, prompt)
    expected_segments: int  # boxes of the done images x variants
    reprocessed: int  # done images whose attempts > 1 (a batch committed twice)
    missing_objects: list[str] = field(default_factory=list)
    bad_masks: list[str] = field(default_factory=list)
    orphans: int = 0
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (reason, error)

    @property
    def lost(self) -> int:
        """Images neither done nor failed, plus segments missing from done images (expected from their boxes)."""
        return self.queued + max(0, self.expected_segments - self.distinct_segments)

    @property
    def duplicates(self) -> int:
        """Segment rows beyond one per (image, variant, prompt) or beyond the boxes, plus images done twice."""
        extra = max(0, self.distinct_segments - self.expected_segments)
        return self.segments - self.distinct_segments + extra + self.reprocessed


def audit_run(stack: Stack, s3: S3Server, run: str, *, n_variants: int = 1, check_masks: bool = True) -> Audit:
    """Count rows, fetch every mask object straight from the S3 server (not through a proxy) and check it."""
    from sqlalchemy import func, select

    from pixelperfect.db.models import Annotation, Image, Segment
    from pixelperfect.db.session import session_scope

    url = stack.values["database_url"]
    run_id = run_id_of(url, run)
    client = s3.client()
    with session_scope(url) as session:
        images = session.execute(
            select(
                Image.id,
                Image.key,
                Image.status,
                Image.attempts,
                Image.width,
                Image.height,
                Image.error_reason,
                Image.error,
            ).where(Image.run_id == run_id)
        ).all()
        segs = session.execute(
            select(Segment.image_id, Segment.variant, Segment.prompt_index, Segment.mask_key, Segment.area).where(
                Segment.run_id == run_id
            )
        ).all()
        boxes = dict(
            session.execute(
                select(Annotation.image_key, func.count())
                .where(Annotation.run_id == run_id)
                .group_by(Annotation.image_key)
            ).all()
        )
    by_id = {row.id: row for row in images}
    done = [row for row in images if row.status == "done"]
    audit = Audit(
        images=len(images),
        done=len(done),
        failed=sum(row.status == "failed" for row in images),
        queued=sum(row.status == "queued" for row in images),
        segments=len(segs),
        distinct_segments=len({(s.image_id, s.variant, s.prompt_index) for s in segs}),
        expected_segments=sum(boxes.get(row.key, 0) for row in done) * n_variants,
        reprocessed=sum(row.attempts > 1 for row in done),
        failures={row.key: (row.error_reason, row.error) for row in images if row.status == "failed"},
    )
    if check_masks:
        bucket = stack.values["store_url"][5:].split("/", 1)[0]
        for s in segs:
            key = s.mask_key.split(f"s3://{bucket}/", 1)[1]
            try:
                data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except client.exceptions.NoSuchKey:
                audit.missing_objects.append(key)
                continue
            mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            image = by_id[s.image_id]
            if (
                mask is None
                or mask.shape != (image.height, image.width)
                or int((mask > 0).sum()) != s.area
                or not set(np.unique(mask).tolist()) <= {0, 255}
            ):
                audit.bad_masks.append(key)
        stored = [
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"results/{run}/masks/")
            for o in page.get("Contents", [])
        ]
        audit.orphans = len(set(stored) - {s.mask_key.split(f"s3://{bucket}/", 1)[1] for s in segs})
    return audit


# --- worker processes -------------------------------------------------------------------------------------------


def pool_children(pid: int) -> list[int]:
    """PIDs of a worker main process's pool processes (from /proc; no psutil)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """Resident (``VmRSS``) or peak resident (``VmHWM``) memory of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def log_count(path: Path, pattern: str) -> int:
    return len(re.findall(pattern, path.read_text(errors="replace")))


def wait_for_log(path: Path, pattern: str, timeout: float = 60, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_count(path, pattern) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{pattern!r} x{count} not in {path} after {timeout}s:\n{path.read_text()[-3000:]}")


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
