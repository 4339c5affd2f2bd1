"""The usual mistakes of a first day (issue 31), each against the real thing — a Redis, PostgreSQL, S3 endpoint,
DICOMweb or DIMSE port nobody listens on, a fresh SQLite file, a bucket that does not exist on a live moto server
— through the real ``pixelperfect`` command: one line on stderr naming the setting and the address (never the
password), the expected exit status, no traceback, and nothing registered (not even the tables). Then a run whose
store starts refusing writes mid-run: it pauses itself instead of failing the archive, ``status`` and ``runs``
say why, and ``submit`` resumes it."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PIXELPERFECT, ROOT, S3Server, WorkerProcess, service_env
from tests.integration.live import listen_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "s3cr3t-pw"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Mistake:
    """One row of the table: the command, its settings, and what its one line must name."""

    name: str
    args: list[str]
    settings: dict[str, str]
    names: list[str]  # substrings of the one line: the setting, the address, what went wrong
    code: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIXELPERFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def registered_runs(db: Path) -> int | None:
    """Runs in the SQLite file ``db``; None when it has no tables (or does not exist): nothing was migrated."""
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        if not conn.execute("select 1 from sqlite_master where name = 'runs'").fetchone():
            return None
        return int(conn.execute("select count(*) from runs").fetchone()[0])


def closed_port() -> int:
    """A port nobody listens on, *below* the ephemeral range: a client retrying a closed port inside it can be
    handed that very port as its own source port and connect to itself (TCP simultaneous open)."""
    return listen_ports(1)


def mistakes(tmp_path: Path, images: Path, s3: S3Server) -> list[Mistake]:
    closed = closed_port
    db = f"sqlite:///{tmp_path / 'pp.db'}"
    store = f"file://{tmp_path / 'store'}"
    submit = ["submit", str(images), "--run", "first", "--model", "sam_tiny"]
    redis_port, pg_port, s3_port, web_port, dimse_port = (closed() for _ in range(5))
    pg = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{pg_port}/test"
    return [
        Mistake("Redis not running, submit", submit,
                {"broker_url": f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0", "database_url": db, "store_url": store},
                ["PIXELPERFECT_BROKER_URL", f"127.0.0.1:{redis_port}", "connection refused"]),
        Mistake("PostgreSQL not running, submit", submit, {"database_url": pg, "store_url": store},
                ["PIXELPERFECT_DATABASE_URL", f"127.0.0.1:{pg_port}", "connection refused"]),
        Mistake("report on a fresh database", ["report", "x", "--out", str(tmp_path / "report")],
                {"database_url": db}, ["PIXELPERFECT_DATABASE_URL", str(tmp_path / "pp.db"), "no PixelPerfect tables"]),
        Mistake("S3 endpoint unreachable, submit", submit,
                {"database_url": db, "store_url": "s3://results/pp", "s3_endpoint_url": f"http://127.0.0.1:{s3_port}"},
                ["PIXELPERFECT_S3_ENDPOINT_URL", f"127.0.0.1:{s3_port}", "connection refused"], extra_env=AWS),
        Mistake("results bucket missing on a live S3, submit", submit,
                {"database_url": db, "store_url": "s3://no-such-bucket/pp", "s3_endpoint_url": s3.endpoint},
                ["PIXELPERFECT_STORE_URL", "s3://no-such-bucket/pp", "bucket not found"], extra_env=AWS),
        Mistake("DICOMweb source refusing, submit",
                ["submit", f"dicomweb+http://127.0.0.1:{web_port}/dicom-web", "--run", "first", "--model", "sam_tiny"],
                {"database_url": db, "store_url": store}, ["SOURCE", f"127.0.0.1:{web_port}", "refused"]),
        Mistake("DIMSE source refusing, submit",
                ["submit", f"dimse://ORTHANC@127.0.0.1:{dimse_port}", "--run", "first", "--model", "sam_tiny"],
                {"database_url": db, "store_url": store}, ["SOURCE", f"127.0.0.1:{dimse_port}"]),
        Mistake("worker, Redis not running", ["worker"],
                {"broker_url": f"redis://127.0.0.1:{redis_port}/0", "database_url": db, "store_url": store},
                ["broker", "PIXELPERFECT_BROKER_URL", f"127.0.0.1:{redis_port}", "connection refused"]),
        Mistake("--debug: the same failure with its traceback", ["--debug", "status", "x"], {"database_url": pg},
                ["Traceback", "OperationalError"], code=1),
    ]  # fmt: skip


def test_the_usual_mistakes_give_one_line_the_right_exit_status_and_register_nothing(
    tmp_path: Path, phantom_dir: Path, s3_server: S3Server
) -> None:
    table = mistakes(tmp_path, phantom_dir / "images", s3_server)

    def attempt(m: Mistake) -> tuple[Mistake, subprocess.CompletedProcess[str], float]:
        t0 = time.monotonic()
        out = run_cli(m.args, service_env(**m.settings) | m.extra_env, timeout=90)
        return m, out, time.monotonic() - t0

    with ThreadPoolExecutor(3) as pool:  # each is a fresh process: most of its time is imports
        results = list(pool.map(attempt, table))
    problems = []
    for m, out, seconds in results:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        said = "\n".join(lines)
        if m.args[0] == "--debug":
            ok = out.returncode != 0 and all(n in out.stderr + out.stdout for n in m.names)
        else:
            ok = (
                out.returncode == m.code
                and len(lines) == 1
                and lines[0].startswith("error: ")
                and all(n in lines[0] for n in m.names)
                and "Traceback" not in out.stderr + out.stdout
            )
        ok = ok and PASSWORD not in out.stderr + out.stdout
        if not ok:
            problems.append(
                f"{m.name}: exit {out.returncode} after {seconds:.1f}s, stderr:\n{said}\nstdout:{out.stdout}"
            )
    assert not problems, "\n\n".join(problems)
    assert registered_runs(tmp_path / "pp.db") is None, "a failed check left tables or runs behind"
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.*"))


def test_doctor_prints_every_check_and_fails_when_one_does(tmp_path: Path, redis_url: str) -> None:
    good = service_env(broker_url=redis_url, database_url=f"sqlite:///{tmp_path / 'pp.db'}",
                       store_url=f"file://{tmp_path / 'store'}")  # fmt: skip
    out = run_cli(["doctor", "--json"], good)
    assert out.returncode == 0, out.stderr + out.stdout
    import json

    checks = {c["what"]: c for c in json.loads(out.stdout)}
    assert set(checks) == {"database", "broker", "store"} and all(c["ok"] for c in checks.values()), checks
    assert checks["broker"]["setting"] == "PIXELPERFECT_BROKER_URL" and checks["broker"]["address"] == redis_url
    assert not any((tmp_path / "store").rglob("*.*")), "the store check left its marker"

    port = closed_port()
    bad = good | {"PIXELPERFECT_BROKER_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}
    out = run_cli(["doctor", str(tmp_path / "nowhere")], bad)
    assert out.returncode == 2, out.stderr + out.stdout
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") >= 4}
    assert {"database", "broker", "store", "source"} <= set(rows), out.stdout
    assert "FAILED" in rows["broker"] and f"127.0.0.1:{port}" in rows["broker"] and PASSWORD not in out.stdout
    assert "ok" in rows["database"] and "ok" in rows["store"]


# --- a store that starts refusing mid-run ------------------------------------------------------------------------


def test_a_run_whose_store_starts_refusing_pauses_itself_and_submit_resumes_it(
    tmp_path: Path, phantom_dir: Path, s3_server: S3Server, redis_url: str, pg_url: str
) -> None:
    """The run's results bucket exists at submit (preflight passes) and is gone when the worker writes (the worker's
    own ``STORE_URL``, which its preflight checks, is another bucket): after 4 images in a row could not be written
    the run pauses itself — no image failed, all still queued — and ``submit --wait`` says so and exits 3; ``status``
    and ``runs`` say why. With the bucket back, ``submit`` resumes it and every image ends done."""
    client = s3_server.client()
    bucket = "results-pause"
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket="worker-own")
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((phantom_dir / "images").glob("*.png")):
        (images / path.name).write_bytes(path.read_bytes())
    (images / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # fails once the store is back
    env = service_env(broker_url=redis_url, database_url=pg_url, store_url=f"s3://{bucket}/pp",
                      s3_endpoint_url=s3_server.endpoint, device="cpu", batch_size="2", retry_backoff_s="0",
                      pause_after_failed_writes="4", visibility_timeout="60", orphan_sweep_s="0") | AWS  # fmt: skip
    submit = ["submit", str(images), "--run", "p", "--model", "sam_tiny", "--prompts", "boxes",
              "--annotations", str(phantom_dir / "labels.csv"), "--wait"]  # fmt: skip
    producer = subprocess.Popen([PIXELPERFECT, *submit], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    engine = create_engine(pg_url)
    worker = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # published: every image has its message in Redis
            with engine.connect() as conn:
                if conn.execute(text("select to_regclass('images')")).scalar() is not None:
                    n, published = conn.execute(text("select count(*), count(published_at) from images")).one()
                    if n == 13 and published == 13:
                        break
            assert producer.poll() is None, producer.communicate()
            time.sleep(0.3)
        else:
            raise TimeoutError("submit did not publish")
        client.delete_bucket(Bucket=bucket)  # empty: the preflight marker was deleted again
        worker_env = env | {"PIXELPERFECT_STORE_URL": "s3://worker-own/pp"}
        worker = WorkerProcess(worker_env, tmp_path / "worker.log", hostname="w1@%h")
        out, err = producer.communicate(timeout=120)
        assert producer.returncode == 3, err + out
        assert "run p paused" in err.strip().splitlines()[-1] and "bucket not found" in err, err
        with engine.connect() as conn:
            state, why = conn.execute(text("select state, state_reason from runs where name = 'p'")).one()
            counts = dict(conn.execute(text("select status, count(*) from images group by status")).all())
            segments = conn.execute(text("select count(*) from segments")).scalar()
            boxed_not_queued = conn.execute(text(
                "select count(*) from images i where status <> 'queued' and exists "
                "(select 1 from annotations a where a.run_id = i.run_id and a.image_key = i.key)"
            )).scalar()  # fmt: skip
            failed = [r[0] for r in conn.execute(text("select key from images where status = 'failed'"))]
        # images with a box needed a mask written: all still queued; none failed for want of a store (an image
        # without a box needs no write and may have finished before the pause; the broken file fails on its own)
        assert state == "paused" and segments == 0 and boxed_not_queued == 0, (state, counts, segments)
        assert set(failed) <= {"zz-broken.png"} and counts["queued"] >= 4, counts
        assert f"s3://{bucket}/pp" in why and "bucket not found" in why and "consecutive" in why, why
        with ThreadPoolExecutor(2) as pool:
            status, runs = pool.map(lambda args: run_cli(args, env), (["status", "p"], ["runs"]))
        assert "paused:" in status.stdout and "bucket not found" in status.stdout, status.stdout
        assert "paused" in runs.stdout and "bucket not found" in runs.stdout, runs.stdout

        client.create_bucket(Bucket=bucket)
        resumed = run_cli(submit, env, timeout=180)  # --wait: the broken image fails, exit 1 with the count last
        assert resumed.returncode == 1, resumed.stderr + resumed.stdout
        last = resumed.stderr.strip().splitlines()[-1]
        assert "1 image(s) failed" in last and "retry p" in last, resumed.stderr
        with engine.connect() as conn:
            state, why = conn.execute(text("select state, state_reason from runs where name = 'p'")).one()
            counts = dict(conn.execute(text("select status, count(*) from images group by status")).all())
        assert state == "active" and why is None and counts == {"done": 12, "failed": 1}, (state, why, counts)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        assert sum(len(page.get("Contents", [])) for page in pages) >= 1, "no mask was written after the resume"
    finally:
        if producer.poll() is None:
            producer.kill()
        if worker is not None:
            worker.stop()
        engine.dispose()
