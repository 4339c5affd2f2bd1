"""End to end on the real parts: moto S3 over HTTP, Redis, PostgreSQL, a `pixelperfect worker` subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from pixelperfect.db.models import Image, Run, Segment
from tests.conftest import PIXELPERFECT, ROOT, S3Server, service_env, upload_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIXELPERFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def wait_for_run(env: dict[str, str], run: str, timeout: float = 180) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    status: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        out = cli(env, "status", run, "--json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        if status["images"]["queued"] == 0:
            return status
        time.sleep(1)
    raise TimeoutError(f"run {run} not finished: {status}")


def test_distributed_run_end_to_end(
    s3_server: S3Server,
    s3_bucket: str,
    redis_url: str,
    pg_url: str,
    phantom_dir: Path,
    tiny_checkpoint: Path,
    start_worker,  # type: ignore[no-untyped-def]
) -> None:
    client = s3_server.client()
    images = upload_dir(client, s3_bucket, phantom_dir / "images", "archive/images")
    upload_dir(client, s3_bucket, phantom_dir / "masks", "archive/masks")
    client.put_object(Bucket=s3_bucket, Key="archive/labels.csv", Body=(phantom_dir / "labels.csv").read_bytes())
    client.put_object(Bucket=s3_bucket, Key="models/sam_tiny.pth", Body=tiny_checkpoint.read_bytes())
    env = (
        service_env(
            broker_url=redis_url,
            database_url=pg_url,
            store_url=f"s3://{s3_bucket}/results",
            s3_endpoint_url=s3_server.endpoint,
            device="cpu",
        )
        | s3_server.env
    )
    assert cli(env, "db", "upgrade").returncode == 0
    start_worker(env)

    args = [
        "submit",
        f"s3://{s3_bucket}/archive/images",
        "--run",
        "dist",
        "--model",
        "sam_tiny",
        "--checkpoint",
        f"s3://{s3_bucket}/models/sam_tiny.pth",
        "--annotations",
        f"s3://{s3_bucket}/archive/labels.csv",
        "--gt-masks",
        f"s3://{s3_bucket}/archive/masks",
        "--variant",
        "raw",
        "--variant",
        "clahe",
        "--batch-size",
        "4",
    ]
    first = cli(env, *args)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "enqueued 3 batch(es)" in first.stdout
    status = wait_for_run(env, "dist")

    boxes = sum(1 for row in csv.DictReader((phantom_dir / "labels.csv").open()) if row["Target"] == "1")
    assert status["images"] == {"queued": 0, "done": 12, "failed": 0}
    assert status["segments"] == boxes * 2
    masks = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="results/dist/masks/")
        for o in page.get("Contents", [])
    ]
    assert len(masks) == boxes * 2
    assert all(k.endswith(".png") for k in masks)

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        run = conn.execute(select(Run)).one()
        assert run.checkpoint_sha256 and len(run.checkpoint_sha256) == 64
        assert [v["name"] for v in run.variants] == ["raw", "clahe"]
        assert conn.scalar(select(func.count()).select_from(Image)) == 12
        assert conn.scalar(select(func.count()).select_from(Segment)) == boxes * 2
        assert conn.scalar(select(func.count()).select_from(Segment).where(Segment.dice.is_(None))) == 0
        mask_keys = set(conn.scalars(select(Segment.mask_key)))
        hosts = set(conn.scalars(select(Image.worker_host)))
    assert mask_keys == {f"s3://{s3_bucket}/{k}" for k in masks}  # every row names an object that exists
    assert len(hosts) == 1 and None not in hosts

    again = cli(env, *args)
    assert again.returncode == 0, again.stderr
    assert "0 new" in again.stdout and "0 pending" in again.stdout and "enqueued 0 batch(es)" in again.stdout
    time.sleep(1)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Segment)) == boxes * 2
        assert conn.scalar(select(func.max(Image.attempts))) == 1
    engine.dispose()
    assert len(images) == 12
