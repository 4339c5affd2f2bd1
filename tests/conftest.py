"""Shared fixtures: tiny SAM checkpoints, phantom X-rays, and the real services (Redis, PostgreSQL, moto S3)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pixelperfect.config import Settings, use_settings

REDIS_HOST = os.environ.get("PIXELPERFECT_TEST_REDIS", "127.0.0.1:6379")
PG_ADMIN_URL = os.environ.get("PIXELPERFECT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[1]
PIXELPERFECT = str(Path(sys.executable).with_name("pixelperfect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts from the environment, never from settings a previous test installed."""
    for var in [v for v in os.environ if v.startswith("PIXELPERFECT_")]:
        monkeypatch.delenv(var, raising=False)
    use_settings(None)
    yield
    use_settings(None)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``sam_tiny`` saved through the real checkpoint format (config + state dict)."""
    import torch

    from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam, tiny_checkpoint_bytes

    torch.manual_seed(7)
    cfg = TinyConfig()
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    path.write_bytes(tiny_checkpoint_bytes(build_tiny_sam(cfg), cfg))
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 phantom chest X-rays (256² px) with masks and RSNA labels."""
    from pixelperfect.synthetic.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, 12, seed=3, size=256)
    return out


# --- services -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database of its own on the real server, flushed before use."""
    import redis

    host, port = REDIS_HOST.split(":")
    db = 1 + secrets.randbelow(14)
    client = redis.Redis(host=host, port=int(port), db=db)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # pragma: no cover - .ci/run starts Redis
        pytest.fail(f"Redis is not running at {REDIS_HOST}: {exc}")
    client.flushdb()
    return f"redis://{host}:{port}/{db}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # pragma: no cover - .ci/run starts PostgreSQL
        pytest.fail(f"PostgreSQL is not running at {PG_ADMIN_URL}: {exc}")
    engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database per test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"pp_test_{secrets.token_hex(4)}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from pixelperfect.db import session as db_session

    for key, engine in list(db_session._ENGINES.items()):
        if key[1] == url:
            engine.dispose()
            del db_session._ENGINES[key]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]

    def client(self):  # type: ignore[no-untyped-def]
        from pixelperfect.storage import make_s3_client

        return make_s3_client(self.endpoint)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 over real HTTP on a free loopback port."""
    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}", env)
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    name = f"pp-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def upload_dir(client, bucket: str, local: Path, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    keys = []
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
    return keys


# --- worker processes -----------------------------------------------------------------------------------------


class WorkerProcess:
    """A real ``pixelperfect worker`` subprocess, stopped and reaped by the fixture."""

    def __init__(self, env: dict[str, str], log: Path, *, hostname: str, extra: list[str] | None = None) -> None:
        self.log = log
        self.hostname = hostname
        self._fh = log.open("wb")
        cmd = [PIXELPERFECT, "worker", "--hostname", hostname, "--concurrency", "1", *(extra or [])]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if " ready." in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self, timeout: float = 30) -> None:
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._fh.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[WorkerProcess] = []

    def start(
        env: dict[str, str], *, hostname: str = "w1@%h", extra: list[str] | None = None, wait: bool = True
    ) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", hostname=hostname, extra=extra)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def service_env(**values: str) -> dict[str, str]:
    """The current environment plus ``PIXELPERFECT_*`` values, for subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELPERFECT_")}
    env.update({f"PIXELPERFECT_{k.upper()}": v for k, v in values.items()})
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def embedded_settings(tmp_path: Path, **overrides: object) -> Settings:
    settings = Settings(
        broker_url=None,
        database_url=f"sqlite:///{tmp_path / 'pp.db'}",
        store_url=f"file://{tmp_path / 'store'}",
        model="sam_tiny",
        device="cpu",
        retry_backoff_s=0.0,
        task_max_retries=1,
    ).model_copy(update=overrides)
    use_settings(settings)
    return settings


def count_model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the model name of every segmenter the worker runtime builds from now on (the list fills in)."""
    from pixelperfect.worker import runtime

    loads: list[str] = []
    build = runtime.build_segmenter

    def counting(model: str, *args: object, **kwargs: object) -> object:
        loads.append(model)
        return build(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "build_segmenter", counting)
    return loads


# --- Orthanc (the archive tests' PACS), registered for every directory ----------------------------------------

from tests.orthanc import dimse_archive, dimse_proxy, empty_orthanc, orthanc, orthanc_proxy  # noqa: E402, F401
