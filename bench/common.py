"""Shared pieces of the speed benchmarks (issue 8): result lines, phantom archives, a ``sam_tiny`` checkpoint, and
the real services (a fresh PostgreSQL database, a Redis database, moto's S3 server over HTTP).

Every benchmark prints ``P<n> <what> ratio=<x>`` or ``P<n> <what> value=<x> <unit>`` lines, then ``#`` detail lines.
"""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

PG_ADMIN_URL = os.environ.get("PIXELPERFECT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST = os.environ.get("PIXELPERFECT_TEST_REDIS", "127.0.0.1:6379")
PIXELPERFECT = str(Path(sys.executable).with_name("pixelperfect"))


@dataclass
class Measure:
    """One result line: ``P1 e2e/model time per image ratio=1.02 goal<=1.05 ok=yes``."""

    id: str
    what: str
    value: float
    unit: str = ""  # empty: a ratio
    goal: str = ""  # e.g. "<=1.05" or ">=5000"
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool | None:
        if not self.goal:
            return None
        op, bound = self.goal[:2], float(self.goal[2:])
        return self.value <= bound if op == "<=" else self.value >= bound

    def line(self) -> str:
        number = f"{self.value:.3f}" if abs(self.value) < 100 else f"{self.value:.0f}"
        head = f"{self.id} {self.what} " + (f"ratio={number}" if not self.unit else f"value={number} {self.unit}")
        if self.goal:
            head += f" goal{self.goal} ok={'yes' if self.ok else 'no'}"
        return head

    def print(self) -> None:
        print(self.line(), flush=True)
        for detail in self.details:
            print(f"#   {detail}", flush=True)


def rss_mib(pid: int | None = None) -> float:
    """Resident set size of a process (default: this one) in MiB, from /proc."""
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc status")


def load_average() -> float:
    return os.getloadavg()[0]


def write_tiny_checkpoint(path: Path, image_size: int) -> Path:
    """A seeded ``sam_tiny`` at ``image_size``² input, saved through the real checkpoint format."""
    import torch

    from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam, tiny_checkpoint_bytes

    torch.manual_seed(7)
    cfg = TinyConfig(image_size=image_size)
    path.write_bytes(tiny_checkpoint_bytes(build_tiny_sam(cfg), cfg))
    return path


def two_boxes(index: int, size: int) -> list[tuple[float, float, float, float]]:
    """Two lung-sized XYXY boxes per image (left and right lung field, shifted a little per image)."""
    s, d = size / 1024, (index % 7) * 9
    return [
        (200 * s + d, 300 * s, 460 * s + d, 720 * s),
        (580 * s - d, 320 * s, 840 * s - d, 740 * s),
    ]


def write_archive(out: Path, n: int, size: int, *, seed: int = 11) -> tuple[Path, Path]:
    """``n`` phantom PNGs (8-bit, ``size``²) under ``out/images`` and an RSNA CSV with two boxes per image."""
    from pixelperfect.synthetic.phantoms import write_phantoms

    write_phantoms(out, n, seed=seed, size=size)
    labels = out / "two_boxes.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        for i in range(n):
            for x1, y1, x2, y2 in two_boxes(i, size):
                writer.writerow([f"phantom-{i:05d}", x1, y1, x2 - x1, y2 - y1, 1])
    return out / "images", labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_db() -> Iterator[str]:
    """A fresh PostgreSQL database on the real server, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"pp_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from pixelperfect.db import session as db_session

        for key, engine in list(db_session._ENGINES.items()):
            if key[1] == url:
                engine.dispose()
                del db_session._ENGINES[key]
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def redis_db() -> Iterator[str]:
    """A Redis database of its own on the real server (numbers 1..15 chosen at random), flushed before and after."""
    import redis

    host, port = REDIS_HOST.split(":")
    db = 1 + secrets.randbelow(15)
    client = redis.Redis(host=host, port=int(port), db=db)
    client.flushdb()
    try:
        yield f"redis://{host}:{port}/{db}"
    finally:
        client.flushdb()
        client.close()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 over real HTTP on a free loopback port (AWS test credentials set in this environment)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def env_for(**values: str) -> dict[str, str]:
    """This environment without ``PIXELPERFECT_*``, plus the given values as ``PIXELPERFECT_<KEY>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELPERFECT_")}
    env.update({f"PIXELPERFECT_{k.upper()}": v for k, v in values.items()})
    return env


def stage_ms(database_url: str, run: str) -> dict[str, float]:
    """Mean milliseconds per image of each pipeline stage of ``run`` (the workers' own timings, stage order by
    name). Stages overlap on the worker's threads, so they do not add up to the wall time per image."""
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope

    with session_scope(database_url) as session:
        row = repo.get_run(session, name=run)
        totals, n = repo.stage_timings(session, run_id=row.id) if row else ({}, 0)
    return {stage: 1000 * totals[stage] / n for stage in sorted(totals)} if n else {}


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.wall`` and ``sw.cpu`` (process CPU seconds, all threads)."""

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


class Worker:
    """A real ``pixelperfect worker`` subprocess (prefork, one pool process), stopped by :meth:`stop`."""

    def __init__(self, env: dict[str, str], log: Path, hostname: str) -> None:
        import subprocess

        self.log = log
        self._fh = log.open("wb")
        cmd = [PIXELPERFECT, "worker", "--hostname", hostname, "--concurrency", "1", "--loglevel", "WARNING"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the pool process exists (Celery's " ready." line is below the WARNING log level)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text(errors='replace')[-3000:]}")
            if self.pool_pids():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s")

    def pool_pids(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(60)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._fh.close()


def wait_done(database_url: str, run_id: int, total: int, timeout: float = 600, poll_s: float = 0.2) -> float:
    """Seconds until ``total`` images of the run are done or failed (raises on timeout or failures)."""
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        with session_scope(database_url) as session:
            counts = repo.status_counts(session, run_id=run_id)
        if counts["done"] + counts["failed"] >= total:
            if counts["failed"]:
                raise RuntimeError(f"{counts['failed']} images failed: {counts}")
            return time.perf_counter() - t0
        time.sleep(poll_s)
    raise TimeoutError(f"run {run_id} not done after {timeout}s")
