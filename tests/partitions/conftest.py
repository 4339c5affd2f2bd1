"""Partition fixtures: the hosts and services a module's scenarios share, and the closing table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.partitions.cluster import Services
from tests.partitions.netns import NetnsUnavailable

#: ``make partition``: every scenario; without it only the short one runs (``make test``).
PARTITION = os.environ.get("PP_PARTITION") == "1"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    try:
        found = Services(tmp_path_factory.mktemp("partition-services"))
    except NetnsUnavailable as exc:
        pytest.skip(f"hosts of our own cannot be made here: {exc}")
    try:
        yield found
    finally:
        found.close()
    assert found.network.leftovers() == [], "namespaces or links left behind"


RESULTS_FILE = Path(os.environ.get("PIXELPERFECT_PARTITION_TABLE", "/tmp/pixelperfect-partition-table.tsv"))
COLUMNS = ("scenario", "images", "lost", "duplicated", "fenced", "encoder/image", "takeover_s", "recover_s", "notes")


@pytest.fixture(scope="session")
def partition_table() -> Iterator[list[dict[str, object]]]:
    """Rows (one per scenario, :data:`COLUMNS`), printed and written to a TSV when the session ends."""
    rows: list[dict[str, object]] = []
    yield rows
    if rows:
        lines = ["\t".join(COLUMNS)] + ["\t".join(str(row.get(c, "")) for c in COLUMNS) for row in rows]
        RESULTS_FILE.write_text("\n".join(lines) + "\n")
        print("\npartition scenarios:\n" + "\n".join(lines))
