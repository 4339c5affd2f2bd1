"""A PostgreSQL server of the test's own (``initdb`` in a temporary directory, a free loopback port), which the
chaos soak may crash and restart without touching the shared server every other test and session uses."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("initdb not found: install PostgreSQL (scripts/system-deps.sh)")
    return Path(initdb).parent


class PostgresServer:
    """``postgres`` on a private port with trust auth and no fsync (a test database, not a durable one).

    As root the server runs as the ``postgres`` user (PostgreSQL refuses root), so its directory is made under
    the system temporary directory, readable by that user. :meth:`crash` is an immediate shutdown (``pg_ctl -m
    immediate``: no checkpoint, every connection cut, crash recovery at the next start) — what a killed server
    looks like to its clients.
    """

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="pp-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o755)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else cmd

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(self._cmd(tool, *args), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")  # fmt: skip
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "60", "start")

    def crash(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self, down_s: float = 2.0) -> None:
        self.crash()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def remove(self) -> None:
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)
