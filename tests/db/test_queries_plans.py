"""The report's and status's queries read only their own runs' rows: on PostgreSQL tables of more than 100,000
segments (a run cloned in SQL beside the golden runs), after ANALYZE, no plan scans ``segments``, ``images`` or
``annotations`` sequentially when it reports on a small run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from pixelperfect.db import queries
from pixelperfect.db.models import Run
from pixelperfect.db.session import get_engine, session_scope
from pixelperfect.evaluation.build import build_report
from tests.conftest import embedded_settings
from tests.evaluation.golden.load import load_golden
from tests.evaluation.golden.synth import clone_run

pytestmark = pytest.mark.integration

BIG_TABLES = ("segments", "images", "annotations")


def _plans(url: str, statements: list[tuple[str, Any]]) -> list[tuple[str, list[str]]]:
    """``(statement, sequentially scanned tables)`` for every SELECT recorded."""
    out = []
    with get_engine(url).connect() as conn:
        for statement, params in statements:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).scalar_one()
            plan = raw if isinstance(raw, list) else json.loads(raw)
            seq: list[str] = []

            def walk(node: dict[str, Any], seq: list[str] = seq) -> None:
                if node.get("Node Type") == "Seq Scan":
                    seq.append(node.get("Relation Name", "?"))
                for child in node.get("Plans", []):
                    walk(child)

            walk(plan[0]["Plan"])
            out.append((statement, seq))
    return out


def test_report_and_status_use_indexes_on_large_tables(pg_url: str, tmp_path: Path) -> None:
    load_golden(pg_url)
    clone_run(pg_url, source="g-sam", name="big", images=30_000)  # 117,600 segments, 30,000 images
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM segments")).scalar_one() > 100_000

    settings = embedded_settings(tmp_path, database_url=pg_url)
    recorded: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        recorded.append((statement, params))

    engine = get_engine(pg_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        build_report(["g-sam", "g-grab"], tmp_path / "out", settings=settings, fmt="json")
        with session_scope(pg_url) as session:
            rid = session.scalar(select(Run.id).where(Run.name == "g-sam"))
            assert rid is not None
            progress = queries.run_progress(session, run_id=rid)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert progress["images"]["done"] == 24 and progress["segments"] == 48

    plans = _plans(pg_url, recorded)
    assert len(plans) >= 15  # summaries, bins, pairs, streams, detection, cases, status
    bad = [(s.split("FROM")[1][:160] if "FROM" in s else s[:160], seq) for s, seq in plans
           if set(seq) & set(BIG_TABLES)]  # fmt: skip
    assert not bad, bad
    control = _plans(pg_url, [("SELECT count(*) FROM segments WHERE stability > 0.5", {})])
    assert "segments" in control[0][1]  # the check sees a sequential scan where there is one
