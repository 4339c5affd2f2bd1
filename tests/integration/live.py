"""Helpers of the live monitoring tests: an archive in moto S3, CLI submission, Flower and metrics endpoints."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, func, select

from pixelperfect.db.models import Image, Run
from tests.conftest import PIXELPERFECT, ROOT, S3Server, service_env, upload_dir


def archive_env(
    s3_server: S3Server, bucket: str, redis_url: str, pg_url: str, phantom_dir: Path, checkpoint: Path
) -> dict[str, str]:
    """Upload 12 phantoms, their labels and a tiny SAM checkpoint; migrate ``pg_url``; the services' environment."""
    from pixelperfect.db.migrate import upgrade

    client = s3_server.client()
    upload_dir(client, bucket, phantom_dir / "images", "archive/images")
    client.put_object(Bucket=bucket, Key="archive/labels.csv", Body=(phantom_dir / "labels.csv").read_bytes())
    client.put_object(Bucket=bucket, Key="models/sam_tiny.pth", Body=checkpoint.read_bytes())
    upgrade(pg_url)
    env = service_env(
        broker_url=redis_url,
        database_url=pg_url,
        store_url=f"s3://{bucket}/results",
        s3_endpoint_url=s3_server.endpoint,
        device="cpu",
    )
    return env | s3_server.env


def positive_boxes(phantom_dir: Path) -> int:
    return sum(1 for row in csv.DictReader((phantom_dir / "labels.csv").open()) if row["Target"] == "1")


def submit(env: dict[str, str], bucket: str, run: str, batch_size: int) -> str:
    """``pixelperfect submit`` as a user types it; returns its stdout."""
    args = [
        PIXELPERFECT, "submit", f"s3://{bucket}/archive/images", "--run", run, "--model", "sam_tiny",
        "--checkpoint", f"s3://{bucket}/models/sam_tiny.pth", "--annotations", f"s3://{bucket}/archive/labels.csv",
        "--variant", "raw", "--variant", "clahe", "--batch-size", str(batch_size),
    ]  # fmt: skip
    out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def wait_for_run(pg_url: str, run: str, timeout: float = 180) -> None:
    """Poll the database until no image of ``run`` is queued."""
    engine = create_engine(pg_url)
    deadline = time.monotonic() + timeout
    queued = -1
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                queued = conn.scalar(
                    select(func.count()).select_from(Image).join(Run).where(Run.name == run, Image.status == "queued")
                )
            if queued == 0:
                return
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise TimeoutError(f"run {run}: {queued} images still queued after {timeout}s")


def listen_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive free ports for a server to listen on, chosen *below* the kernel's
    ephemeral range: ports from ``free_port()`` lie inside it, where the run's own client sockets (S3, Redis,
    PostgreSQL) can take ``port + 1`` before a worker's second pool process binds it."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, low - count)
        try:
            socks = []
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` of a worker as ``{'name{labels}': value}`` (comments dropped)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class Flower:
    """``celery -A pixelperfect.worker.app flower`` as docker-compose runs it, on a free loopback port."""

    def __init__(self, env: dict[str, str], port: int, workdir: Path, auth: tuple[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.auth = auth
        self.log = workdir / "flower.log"
        self._fh = self.log.open("wb")
        env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
        env["FLOWER_BASIC_AUTH"] = f"{auth[0]}:{auth[1]}"  # as compose passes it (Flower reads FLOWER_<OPTION>)
        cmd = [
            sys.executable, "-m", "celery", "-A", "pixelperfect.worker.app", "flower", f"--port={port}",
            "--address=127.0.0.1", "--persistent=True", f"--db={workdir / 'flower.db'}",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT)

    def get(self, path: str, *, auth: Any = True, **params: Any) -> requests.Response:
        return requests.get(self.url + path, auth=self.auth if auth is True else auth, params=params, timeout=15)

    def wait_until(self, what: str, check: Any, timeout: float = 60) -> Any:
        """Call ``check()`` until it returns something truthy (connection errors count as not yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                result = check()
            except requests.ConnectionError:
                result = None
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"flower: {what} not seen after {timeout}s\n{self.tail()}")

    def loaded_libraries(self) -> str:
        return Path(f"/proc/{self.proc.pid}/maps").read_text()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._fh.close()


def host_node(prefix: str) -> str:
    """The Celery node name ``prefix@%h`` expands to on this machine."""
    return f"{prefix}@{socket.gethostname()}"
