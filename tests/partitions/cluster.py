"""A partition test's world: hosts (``netns.py``), the services on the bridge (``services.py``), workers on the
hosts, a run through the real producer, and what the test measures and audits afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, S3Server
from tests.faults.runs import Stack, make_stack, use_broker
from tests.faults.soak import SoakWorker, write_archive
from tests.partitions.netns import Host, Network
from tests.partitions.services import S3_ENV, HostPostgres, HostRedis, MotoProcess

BATCH = 4


class HostWorker(SoakWorker):
    """The fault tests' fixed-cost worker (``tests.partitions.worker``: with holds), run on ``host``."""

    def __init__(self, host: Host, env: dict[str, str], log: Path, name: str, seconds: float, holds: Path) -> None:
        self.host, self.holds, self.name = host, holds, name
        holds.mkdir(parents=True, exist_ok=True)
        super().__init__({**env, "PP_HOLD_DIR": str(holds)}, log, f"{name}@%h", seconds)

    @property
    def node(self) -> str:
        """The Celery node name: ``Image.worker_host`` and the ``host`` of ``host:pid`` in leases and model work."""
        return f"{self.name}@{self.host.hostname}" if self.host.network.uts else f"{self.name}@{os.uname().nodename}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.partitions.worker", "worker", "--hostname", self.hostname,
                "--concurrency", "1"]  # fmt: skip
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(self.host.command(argv), env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         cwd=ROOT, start_new_session=True)  # fmt: skip

    def hold(self, point: str) -> None:
        (self.holds / f"{point}.held").unlink(missing_ok=True)
        (self.holds / point).touch()

    def wait_held(self, point: str, timeout: float = 90) -> float:
        """Wait until the worker waits at ``point``; returns when it got there (``time.time``)."""
        marker = self.holds / f"{point}.held"
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.node} never reached hold {point!r}:\n{self.tail()}")
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.node} exited:\n{self.tail()}")
            time.sleep(0.05)
        return float(marker.read_text().split()[1])

    def release(self, point: str) -> None:
        (self.holds / point).unlink(missing_ok=True)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def fenced(self) -> int:
        """Images this worker's final transactions refused (another delivery held them): worker/leases.py's log."""
        pattern = r"(\d+) of its \d+ image\(s\) were taken over by another delivery; not written here"
        return sum(int(m) for m in re.findall(pattern, self.log.read_text(errors="replace")))

    def kill(self) -> None:
        """SIGKILL the worker's process group (teardown: a cut-off worker's soft shutdown would wait on it)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(10)


class Services:
    """The hosts and the services every partition test of a module shares (a database and a bucket per test)."""

    def __init__(self, workdir: Path, n_hosts: int = 3) -> None:
        self.network = Network(n_hosts)
        self.redis: HostRedis | None = None
        self.pg: HostPostgres | None = None
        self.moto: MotoProcess | None = None
        try:
            os.environ.update(S3_ENV)
            self.redis = HostRedis(workdir / "redis", self.network.address)
            self.redis.start()
            self.pg = HostPostgres(self.network.address)
            self.pg.start()
            self.moto = MotoProcess(self.network.address, workdir / "moto.log")
            for port in (self.redis.port, self.pg.port, self.moto.port):
                self.network.reachable(self.network.hosts[0], port)
        except BaseException:
            self.close()
            raise

    @property
    def s3(self) -> S3Server:
        assert self.moto is not None
        return self.moto.server

    @property
    def ports(self) -> dict[str, int]:
        assert self.redis and self.pg and self.moto
        return {"redis": self.redis.port, "postgres": self.pg.port, "s3": self.moto.port}

    def new_database(self) -> str:
        from sqlalchemy import create_engine, text

        assert self.pg is not None
        name = f"pp_{secrets.token_hex(4)}"
        admin = create_engine(self.pg.url.replace(self.network.address, "127.0.0.1"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.pg.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        """Stop the services and remove the network, each step whatever became of the one before."""
        steps = [s.stop for s in (self.moto,) if s] + [s.kill for s in (self.redis,) if s]
        steps += [s.remove for s in (self.pg,) if s] + [self.network.close]
        for step in steps:
            with contextlib.suppress(Exception):
                step()


@dataclass
class Cluster:
    """One test's run: its database, bucket, archive, settings and workers."""

    services: Services
    tmp: Path
    stack: Stack
    bucket: str
    workers: list[HostWorker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.stack.values["database_url"])

    @property
    def hosts(self) -> list[Host]:
        return self.services.network.hosts

    def upload_archive(self, n: int) -> None:
        images, labels, _ = write_archive(self.tmp / "archive", n)
        client = self.services.s3.client()
        data = (images / "img-0000000.png").read_bytes()
        names = sorted(p.name for p in images.iterdir())
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.put_object(Bucket=self.bucket, Key=f"archive/images/{k}", Body=data), names))
        client.put_object(Bucket=self.bucket, Key="archive/labels.csv", Body=labels.read_bytes())

    def start_workers(self, n: int, seconds: float, *, holds: Sequence[str] = (), **env: Any) -> list[HostWorker]:
        """``n`` workers on the next free hosts, each ``w<i>`` on ``pp-h<i>``, with ``holds`` armed from the start."""
        base = self.stack.env(**env)
        for _ in range(n):
            host = self.hosts[len(self.workers)]
            log = self.tmp / f"w{len(self.workers) + 1}.log"
            name = f"w{len(self.workers) + 1}"
            worker = HostWorker(host, base, log, name, seconds, self.tmp / f"holds-{name}")
            for point in holds:
                worker.hold(point)
            self.workers.append(worker)
        for w in self.workers[-n:]:
            w.wait_ready()
        return self.workers[-n:]

    def submit(self, run: str, **request: Any) -> Any:
        from pixelperfect.producer.enqueue import SubmitRequest, submit

        use_broker(self.stack.settings)
        req = SubmitRequest(source=f"s3://{self.bucket}/archive/images", run=run, variants=("raw",),
                            model="sam_tiny", checkpoint="random", annotations=f"s3://{self.bucket}/archive/labels.csv",
                            batch_size=BATCH, **request)  # fmt: skip
        return submit(req, self.stack.settings)

    def consume(self, worker: HostWorker, on: bool) -> None:
        """Have ``worker`` stop (or start again) taking messages from the gpu queue (Celery's remote control:
        ``cancel_consumer``/``add_consumer``; a batch in its hands finishes), so the rest goes to the others."""
        from pixelperfect.worker.app import GPU_QUEUE, app

        use_broker(self.stack.settings)
        control = app.control.add_consumer if on else app.control.cancel_consumer
        replies = control(GPU_QUEUE, destination=[worker.node], reply=True, timeout=10)
        assert replies and all("ok" in r for reply in replies for r in reply.values()), replies

    # --- what the database says -------------------------------------------------------------------------------

    def query(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        from pixelperfect.db.session import session_scope

        with session_scope(self.url) as session:
            return list(session.execute(text(sql), params).all())

    def leased_by(self, worker: HostWorker) -> list[int]:
        """Queued images under a lease taken by ``worker`` (``lease_worker`` = ``token@node:pid``)."""
        rows = self.query("select id from images where status = 'queued' and lease_worker like :w",
                          w=f"%@{worker.node}:%")  # fmt: skip
        return sorted(int(r[0]) for r in rows)

    def status_of(self, ids: Sequence[int]) -> list[tuple[int, str, str | None, datetime | None]]:
        rows = self.query("select id, status, worker_host, finished_at from images where id = any(:ids)", ids=list(ids))
        return sorted((int(i), str(s), h, f) for i, s, h, f in rows)

    def counts(self) -> dict[str, int]:
        rows = self.query("select status, count(*) from images group by status")
        return {"queued": 0, "done": 0, "failed": 0, "cancelled": 0} | {str(s): int(n) for s, n in rows}

    def model_work(self) -> tuple[int, int]:
        (n, distinct), *_ = self.query("select count(*), count(distinct image_id) from model_work")
        return int(n), int(distinct)

    def first_done_after(self, worker: HostWorker, after: float) -> float | None:
        """When ``worker`` finished its first image after ``after`` (``time.time``), or None."""
        rows = self.query("select min(finished_at) from images where worker_host = :w and finished_at > "
                          "to_timestamp(:t)", w=worker.node, t=after)  # fmt: skip
        return rows[0][0].timestamp() if rows and rows[0][0] is not None else None

    def wait_until(self, what: str, predicate: Any, timeout: float, poll: float = 0.1) -> float:
        """Poll ``predicate()`` until true; returns when (``time.time``). Fails with the workers' logs."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # a database the test itself cannot reach right now
                if predicate():
                    return time.time()
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.node}\n{w.tail(2500)}" for w in self.workers)
                raise AssertionError(f"{what}: not after {timeout:.0f}s; {self.counts()}\n{logs}")
            time.sleep(poll)

    def wait_drained(self, timeout: float = 120) -> float:
        assert self.services.redis is not None
        redis = self.services.redis
        return self.wait_until("run drained", lambda: self.counts()["queued"] == 0 and redis.backlog() == (0, 0),
                               timeout)  # fmt: skip


@contextlib.contextmanager
def cluster(services: Services, tmp: Path, **settings: Any) -> Iterator[Cluster]:
    """A fresh database and bucket on ``services``; on the way out every host is healed and every worker killed."""
    from pixelperfect.db.migrate import upgrade

    url = services.new_database()
    upgrade(url)
    bucket = f"pp-{secrets.token_hex(4)}"
    services.s3.client().create_bucket(Bucket=bucket)
    assert services.redis is not None
    services.redis.client().flushall()
    stack = make_stack(services.s3, bucket, services.redis.url, url, **settings)
    c = Cluster(services, tmp, stack, bucket)
    try:
        yield c
    finally:
        for host in c.hosts:
            if host.cut_how is not None:
                host.heal()
        for w in c.workers:
            w.kill()
        from pixelperfect.db import session as db_session

        for key, engine in list(db_session._ENGINES.items()):
            if key[1] == url:
                engine.dispose()
                del db_session._ENGINES[key]
