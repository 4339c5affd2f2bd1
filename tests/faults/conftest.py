"""Fault-injection fixtures: a Redis server the test owns, a fault-injecting HTTP proxy in front of moto, small
phantoms, and the closing table (test, images, faults injected, lost, duplicates, time)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import S3Server
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
