"""A worker running other code than a run was created with refuses the run's images, with the reason, until the
user accepts the change (``submit --allow-version-change``): real Redis, PostgreSQL and worker processes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, update

from pixelperfect.db.models import Image, Run
from pixelperfect.version import ALLOW_VERSION_CHANGE, CODE_VERSION, VERSION_CHANGED
from tests.conftest import PIXELPERFECT, ROOT, service_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OTHER = "0.0.1+g0000deadbeef"  # the code a run was created with, elsewhere


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


def test_a_worker_refuses_a_run_of_other_code_until_the_change_is_accepted(
    tmp_path: Path, redis_url: str, pg_url: str, phantom_dir: Path, start_worker: Any
) -> None:
    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"file://{tmp_path / 'store'}",
                      device="cpu", retry_backoff_s="0")  # fmt: skip
    assert cli(env, "db", "upgrade").returncode == 0
    submit = ["submit", str(phantom_dir / "images"), "--run", "v", "--model", "grabcut", "--annotations",
              str(phantom_dir / "labels.csv"), "--variant", "raw", "--batch-size", "4"]  # fmt: skip
    first = cli(env, *submit)
    assert first.returncode == 0, first.stderr + first.stdout
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        assert conn.scalar(select(Run.code_version)) == CODE_VERSION  # the producer recorded its own code
        conn.execute(update(Run).values(code_version=OTHER))  # as if another version had created the run

    worker = start_worker(env)
    status = settled(env, "v")
    assert status["images"] == {"queued": 0, "done": 0, "failed": 12}
    assert status["failures"] == {VERSION_CHANGED: 12}
    with engine.connect() as conn:
        errors = set(conn.scalars(select(Image.error)))
        assert conn.scalar(select(Image.n_segments).where(Image.n_segments > 0).limit(1)) is None  # no model work
    (error,) = errors
    assert CODE_VERSION in error and OTHER in error and "--allow-version-change" in error
    assert "images refused" in worker.log.read_text()

    again = cli(env, *submit)  # without the flag: nothing changes, and the producer says why
    assert again.returncode == 0 and "--allow-version-change" in again.stderr, again.stderr
    assert settled(env, "v")["images"]["failed"] == 12

    accepted = cli(env, *submit, "--allow-version-change")
    assert accepted.returncode == 0, accepted.stderr + accepted.stdout
    status = settled(env, "v")
    assert status["images"] == {"queued": 0, "done": 12, "failed": 0}
    with engine.connect() as conn:
        run = conn.execute(select(Run.code_version, Run.settings)).one()
        assert run.code_version == OTHER and run.settings[ALLOW_VERSION_CHANGE] is True  # the run's identity stays
        assert conn.scalar(select(Image.attempts).order_by(Image.attempts.desc()).limit(1)) == 2  # refused, then done
    engine.dispose()
