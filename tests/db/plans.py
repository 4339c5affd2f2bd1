"""A run of 100,000 images on the real PostgreSQL (or SQLite), built in a few INSERT … SELECT statements, and the
plans of the SQL the code really emits (issue 24).

``big_run`` fills a fresh database: a small finished run, then a big run of :data:`N_IMAGES` images (queued, each
tenth done with segments, a SEG row, a model-work record and a box; each tenth failed; each tenth under a live
lease; the queued ones published two hours ago) and a tiny run of images only. Autovacuum is off on every table, so
*stale* statistics stay stale: nothing analyzes the tables after the inserts (the state of a run the producer is
still registering). *fresh*: ``ANALYZE`` after the inserts.

:func:`captured` runs a code path inside a transaction that is rolled back, recording every statement and its
parameters as the driver receives them; :func:`explain` asks the server for their plans (``EXPLAIN (FORMAT JSON)``
on PostgreSQL, ``EXPLAIN QUERY PLAN`` on SQLite). Nothing is re-typed: a test sees the statement the code sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from pixelperfect.db.migrate import upgrade
from pixelperfect.db.session import get_engine

N_IMAGES = 100_000
#: the tables no plan may read whole (issue 24); the smaller ones (model_work, seg_objects, annotations: 5,000 to
#: 10,000 rows here) may be, where the planner finds that cheaper, but only through the indexes meant for them
BIG_TABLES = ("images", "segments")
SMALL, BIG, TINY = 1, 2, 3


@dataclass(frozen=True)
class BigRun:
    url: str
    dialect: str  # postgresql | sqlite
    stats: str  # stale | fresh
    run_id: int = BIG
    tiny_run_id: int = TINY


def _run_row(run_id: int, name: str) -> str:
    return (
        "INSERT INTO runs (id, name, created_at, source_url, store_url, model, variants, prompt_mode, settings, "
        f"code_version, config_hash, kind, state) VALUES ({run_id}, '{name}', CURRENT_TIMESTAMP, 'file:///a', "
        "'file:///s', 'grabcut', '[]', 'boxes', '{}', 'v', 'h', 'segment', 'active')"
    )


def _series(dialect: str, n: int) -> str:
    """``FROM`` clause yielding ``g`` = 1..n."""
    if dialect == "postgresql":
        return f"generate_series(1, {n}) AS s(g)"
    return f"(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) SELECT g FROM s) AS s"


def build(url: str, dialect: str, stats: str, n_images: int = N_IMAGES) -> BigRun:
    """The runs of the module docstring in a fresh database at ``url`` (``n_images``: the big run's size)."""
    upgrade(url)
    pg = dialect == "postgresql"
    now = "now()" if pg else "CURRENT_TIMESTAMP"
    ago = "now() - interval '2 hours'" if pg else "datetime('now', '-2 hours')"
    later = "now() + interval '1 hour'" if pg else "datetime('now', '+1 hour')"
    key = "'images/' || lpad(g::text, 8, '0') || '.dcm'" if pg else "printf('images/%08d.dcm', g)"
    status = "CASE g % 10 WHEN 0 THEN 'done' WHEN 1 THEN 'failed' ELSE 'queued' END"
    with get_engine(url).begin() as conn:
        if pg:
            for table in (*BIG_TABLES, "runs"):
                conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        for run_id, name in ((SMALL, "small"), (BIG, "big"), (TINY, "tiny")):
            conn.execute(text(_run_row(run_id, name)))
        conn.execute(text(
            "INSERT INTO images (run_id, key, status, attempts, created_at) "
            f"SELECT {SMALL}, 'small/' || g, 'done', 1, {now} FROM {_series(dialect, 200)}"
        ))  # fmt: skip
        conn.execute(text(
            "INSERT INTO images (run_id, key, status, error_reason, attempts, created_at, finished_at, n_segments, "
            "lease_owner, lease_worker, lease_expires, published_at) "
            f"SELECT {BIG}, {key}, {status}, CASE WHEN g % 10 = 1 THEN 'truncated' END, 1, {now}, "
            f"CASE WHEN g % 10 = 0 THEN {now} END, CASE WHEN g % 10 = 0 THEN 4 END, "
            "CASE WHEN g % 10 = 2 THEN 'msg-' || (g / 32) END, CASE WHEN g % 10 = 2 THEN 'tok@host:1' END, "
            f"CASE WHEN g % 10 = 2 THEN {later} END, {ago} FROM {_series(dialect, n_images)}"
        ))  # fmt: skip
        conn.execute(text(
            "INSERT INTO images (run_id, key, status, attempts, created_at) "
            f"SELECT {TINY}, 'tiny/' || g, 'queued', 0, {now} FROM {_series(dialect, 10)}"
        ))  # fmt: skip
        done = f"SELECT id FROM images WHERE run_id = {BIG} AND status = 'done'"
        conn.execute(text(
            "INSERT INTO segments (run_id, image_id, variant, prompt_index, prompt_kind, prompt, mask_key, dice, "
            f"score) SELECT {BIG}, d.id, 'raw', p.g - 1, 'box', '[0, 0, 9, 9]', 'file:///m/' || d.id || '-' || p.g, "
            f"0.5, 0.9 FROM ({done}) AS d, {_series(dialect, 4).replace(' AS s', ' AS p')}"
        ))  # fmt: skip
        conn.execute(text(
            f"INSERT INTO model_work (run_id, image_id, worker, created_at) SELECT {BIG}, d.id, 'host:1', {now} "
            f"FROM ({done}) AS d"
        ))  # fmt: skip
        conn.execute(text(
            "INSERT INTO seg_objects (run_id, image_id, variant, object_key, updated_at) "
            f"SELECT {BIG}, d.id, 'raw', 'file:///seg/' || d.id, {now} FROM ({done}) AS d WHERE d.id % 2 = 0"
        ))  # fmt: skip
        conn.execute(text(
            'INSERT INTO annotations (run_id, image_key, "index", kind, x1, y1, x2, y2, label) '
            f"SELECT {BIG}, i.key, 0, 'box', 0, 0, 9, 9, 1 FROM images AS i "
            f"WHERE i.run_id = {BIG} AND i.status = 'done'"
        ))  # fmt: skip
    if stats == "fresh":
        with get_engine(url).begin() as conn:
            conn.execute(text("ANALYZE"))
    return BigRun(url, dialect, stats)


def keys(run: BigRun, numbers: range) -> list[str]:
    """The keys of the big run's images number ``numbers`` (1-based, as generated)."""
    return [f"images/{g:08d}.dcm" for g in numbers]


def image_ids(run: BigRun, numbers: range) -> list[int]:
    with get_engine(run.url).connect() as conn:
        rows = conn.execute(
            text(f"SELECT id FROM images WHERE run_id = {run.run_id} ORDER BY id"),
        ).scalars()
        ordered = list(rows)
    return [ordered[g - 1] for g in numbers]


def captured(run: BigRun, call: Callable[[Session], Any]) -> list[tuple[str, Any]]:
    """``(statement, parameters)`` of every statement ``call(session)`` sends, in a transaction rolled back."""
    engine = get_engine(run.url)
    recorded: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        many = executemany and params and isinstance(params[0], (dict, tuple, list))
        one = params[0] if many else params
        recorded.append((statement, tuple(one) if isinstance(one, list) else one))  # a list reads as many sets

    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as session:
            try:
                call(session)
            finally:
                session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return recorded


@dataclass(frozen=True)
class Plan:
    statement: str
    seq_scans: list[str]  # big tables read whole
    indexes: list[str]  # index names used
    text: str  # the plan, for the failure message


def explain(run: BigRun, statements: list[tuple[str, Any]]) -> Iterator[Plan]:
    """The plan of each DML or SELECT statement among ``statements`` (SET, ANALYZE, PRAGMA ... are skipped)."""
    with get_engine(run.url).connect() as conn:
        for statement, params in statements:
            head = statement.lstrip().split(None, 1)[0].upper()
            if head not in ("SELECT", "UPDATE", "DELETE", "INSERT", "WITH"):
                continue
            if "set_config" in statement:
                continue
            if run.dialect == "postgresql":
                raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).scalar_one()
                plan = raw if isinstance(raw, list) else json.loads(raw)
                yield _pg_plan(statement, plan[0]["Plan"])
            else:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
                yield _sqlite_plan(statement, [str(r[-1]) for r in rows])
            conn.rollback()


def _pg_plan(statement: str, root: dict[str, Any]) -> Plan:
    seq: list[str] = []
    indexes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in BIG_TABLES:
            seq.append(node["Relation Name"])
        if "Index Name" in node:
            indexes.append(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(root)
    return Plan(statement, seq, indexes, json.dumps(root, indent=1)[:6000])


def _sqlite_plan(statement: str, details: list[str]) -> Plan:
    """``SCAN images`` is a full scan (``SCAN images USING INDEX …`` reads a whole index: the same); ``SEARCH images
    USING INDEX name (…)`` / ``USING INTEGER PRIMARY KEY`` a lookup."""
    seq, indexes = [], []
    for line in details:
        words = line.replace("COVERING ", "").split()
        if len(words) >= 2 and words[0] == "SCAN" and words[1] in BIG_TABLES:
            seq.append(words[1])
        if words and words[0] == "SEARCH" and "INDEX" in words:
            indexes.append(words[words.index("INDEX") + 1])
        elif words and words[0] == "SEARCH" and "PRIMARY" in words:
            indexes.append(f"{words[1]}_pkey")
    return Plan(statement, seq, indexes, "\n".join(details))
