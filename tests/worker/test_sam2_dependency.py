"""A worker whose ``transformers`` is too old (or missing) cannot run SAM 2: the run's images fail at once with
reason ``missing_dependency`` and a message naming the package, no retry is burnt, and ``retry --reason
missing_dependency`` after the package is there finishes them. Real Redis, PostgreSQL and worker processes; the
old package is a directory ahead of the virtualenv on the worker's PYTHONPATH (its metadata says 4.40.0)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from pixelperfect.db.models import Image
from pixelperfect.pipeline.model.builder import MIN_TRANSFORMERS
from pixelperfect.worker.runtime import MISSING_DEPENDENCY
from tests.conftest import PIXELPERFECT, ROOT, service_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIXELPERFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def settled(env: dict[str, str], run: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = cli(env, "status", run, "--json")
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        if status["images"]["queued"] == 0:
            return status
        time.sleep(1)
    raise TimeoutError(f"run {run} not settled: {status}")


def old_transformers(root: Path) -> Path:
    package = root / "transformers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "4.40.0"\n')
    info = root / "transformers-4.40.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.40.0\n")
    return root


def test_too_old_transformers_fails_the_images_once_and_retry_finishes_them(
    tmp_path: Path, redis_url: str, pg_url: str, phantom_dir: Path, start_worker: Any
) -> None:
    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"file://{tmp_path / 'store'}",
                      device="cpu", retry_backoff_s="0")  # fmt: skip
    assert cli(env, "db", "upgrade").returncode == 0
    submit = ["submit", str(phantom_dir / "images"), "--run", "old", "--model", "sam2_tiny", "--annotations",
              str(phantom_dir / "labels.csv"), "--variant", "raw", "--batch-size", "6"]  # fmt: skip
    first = cli(env, *submit)  # the producer needs no transformers: it only reads JSON
    assert first.returncode == 0, first.stderr + first.stdout

    shim = old_transformers(tmp_path / "old")
    old_env = env | {"PYTHONPATH": os.pathsep.join([str(shim), env.get("PYTHONPATH", str(ROOT))])}
    worker = start_worker(old_env, hostname="old@%h")
    status = settled(env, "old")
    assert status["images"] == {"queued": 0, "done": 0, "failed": 12}
    assert status["failures"] == {MISSING_DEPENDENCY: 12}
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        errors = set(conn.scalars(select(Image.error)))
        attempts = set(conn.scalars(select(Image.attempts)))
    (error,) = errors
    assert "transformers" in error and "4.40.0" in error and MIN_TRANSFORMERS in error and "retry" in error
    assert attempts == {1}  # refused once, no Celery retries burnt
    log = worker.log.read_text()
    assert "image(s) refused" in log and "retry 1 in" not in log  # BatchTask.retry logs "retry N in Xs"
    worker.stop()

    start_worker(env, hostname="new@%h")  # the package installed: a worker of the same code
    again = cli(env, "retry", "old", "--reason", MISSING_DEPENDENCY)
    assert again.returncode == 0, again.stderr + again.stdout
    assert settled(env, "old")["images"] == {"queued": 0, "done": 12, "failed": 0}
    engine.dispose()
