"""The services of a partition test, listening on the bridge's address (and on 127.0.0.1) so the hosts reach them:
the fault tests' private Redis and PostgreSQL servers, bound to one more address, and a moto S3 server process."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import S3Server, free_port
from tests.faults.postgres import PostgresServer
from tests.faults.services import RedisServer

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class HostRedis(RedisServer):
    """:class:`RedisServer`, also listening on ``address`` (Redis 7 changes ``bind`` at runtime)."""

    def __init__(self, workdir: Path, address: str) -> None:
        super().__init__(workdir)
        self.address = address

    def start(self) -> None:
        super().start()
        self.client().config_set("bind", f"127.0.0.1 {self.address}")

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.address}:{self.port}/0"


class HostPostgres(PostgresServer):
    """:class:`PostgresServer`, also listening on ``address``, trusting the hosts' subnet."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        subnet = address.rsplit(".", 1)[0] + ".0/24"
        with (self.data / "pg_hba.conf").open("a") as fh:
            fh.write(f"host all all {subnet} trust\n")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1,{self.address} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")  # fmt: skip
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "60", "start")


class MotoProcess:
    """``moto_server`` in a process of its own on ``address`` (the test process stays free to stall)."""

    def __init__(self, address: str, log: Path) -> None:
        self.address, self.port = address, free_port()
        moto = Path(sys.executable).with_name("moto_server")
        with log.open("wb") as fh:
            self.proc = subprocess.Popen([str(moto), "-H", address, "-p", str(self.port)], stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection((address, self.port), timeout=0.5):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        self.server = S3Server(f"http://{address}:{self.port}", dict(S3_ENV))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
