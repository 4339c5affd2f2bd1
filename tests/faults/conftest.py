"""Fault-injection fixtures: a Redis server the test owns, a fault-injecting HTTP proxy in front of moto, small
phantoms, the closing table (test, images, faults injected, lost, duplicates, time), and :class:`FaultBed`, all of
them that a fault test needs as one fixture (``bed``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3Server, WorkerProcess
from tests.faults.runs import Archive, Stack, make_archive, make_stack
from tests.faults.services import FaultProxy, RedisServer


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_server.endpoint, seed=6).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def fault_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 small phantoms (128² px): fault tests measure delivery, not segmentation."""
    from pixelperfect.synthetic.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("fault-phantoms")
    write_phantoms(out, 24, seed=11, size=128, positive_fraction=1.0)
    return out


# --- the closing table ------------------------------------------------------------------------------------------

RESULTS_FILE = Path(os.environ.get("PIXELPERFECT_FAULT_TABLE", "/tmp/pixelperfect-fault-table.tsv"))


@pytest.fixture(scope="session")
def fault_table() -> Iterator[list[tuple[str, int, str, int, int, float]]]:
    """Rows (test, images, faults injected, lost, duplicates, seconds), written to a TSV when the session ends."""
    rows: list[tuple[str, int, str, int, int, float]] = []
    yield rows
    if rows:
        with RESULTS_FILE.open("w") as fh:
            fh.write("test\timages\tfaults injected\tlost\tduplicates\ttime_s\n")
            for row in rows:
                fh.write("\t".join(str(v) for v in row[:5]) + f"\t{row[5]:.1f}\n")


# --- the bed every fault test lies in ---------------------------------------------------------------------------


@dataclass
class FaultBed:
    """What a fault test works with: moto S3 over HTTP and a bucket of its own, a Redis server it owns (to restart
    or kill), a PostgreSQL database of its own, small phantoms and a tiny SAM checkpoint, real worker processes
    (``start_worker``, stopped after the test) and the closing table (``table``)."""

    s3: S3Server
    bucket: str
    redis: RedisServer
    pg_url: str
    phantoms: Path
    checkpoint: Path
    start_worker: Callable[..., WorkerProcess]
    table: list[tuple[str, int, str, int, int, float]]

    def archive(self, n: int | None = None) -> Archive:
        """``n`` phantoms, their labels and the checkpoint uploaded to the bucket."""
        return make_archive(self.s3, self.bucket, self.phantoms, self.checkpoint, n=n)

    def stack(self, *, broker_url: str | None = None, **values: Any) -> Stack:
        """The settings of the test's processes: its Redis (or ``broker_url``), PostgreSQL and bucket."""
        return make_stack(self.s3, self.bucket, broker_url or self.redis.url, self.pg_url, **values)


@pytest.fixture
def bed(
    s3_server: S3Server,
    s3_bucket: str,
    private_redis: RedisServer,
    pg_url: str,
    fault_phantoms: Path,
    tiny_checkpoint: Path,
    start_worker: Callable[..., WorkerProcess],
    fault_table: list[tuple[str, int, str, int, int, float]],
) -> FaultBed:
    return FaultBed(s3_server, s3_bucket, private_redis, pg_url, fault_phantoms, tiny_checkpoint, start_worker,
                    fault_table)  # fmt: skip
