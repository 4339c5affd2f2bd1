"""Bulk writes: the producer's registration of a chunk of keys, and a worker's results of a whole batch.

``repo.add_images`` builds one multi-row ``VALUES`` list per 500 rows, ~10k rows/s on PostgreSQL; an archive of a
million images needs more. Here PostgreSQL gets ``COPY`` into a temporary table and one ``INSERT … SELECT … ON
CONFLICT DO NOTHING`` (~50k rows/s on the 2-core development machine), SQLite one executemany of a compiled insert.
Both are upserts on the identity ``(run, key)``: registering a key twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from pixelperfect.db import keyed
from pixelperfect.db.models import Image, ImageStatus, Segment, utcnow
from pixelperfect.db.repo import dialect_insert
from pixelperfect.pipeline.records import SegmentRecord

#: Keys per call the callers should stay under: SQLite binds one parameter per key in ``queued_keys``.
MAX_KEYS = 20_000


def register_images(
    session: Session,
    *,
    run_id: int,
    keys: Sequence[str],
    gt_masks: dict[str, str] | None = None,
    unpublished_only: bool = False,
    published_at: datetime | None = None,
    unpublished_since: datetime | None = None,
) -> tuple[int, list[str]]:
    """Register ``keys`` (at most :data:`MAX_KEYS`) as queued images of run ``run_id``; existing rows are left as
    they are. Returns the number of rows inserted and the keys among ``keys`` that are queued now (new ones and
    unfinished ones of an earlier submission), in the order of ``keys``, each once.

    ``unpublished_only``: of the earlier ones only those no message was published for: ``published_at`` unset, or
    (``unpublished_since``, the run's publish checkpoint a crashed producer left) stamped at or after it.
    ``published_at``: the producer's stamp for the keys it returns, set in the same transaction — the new rows'
    in the insert itself, the earlier ones' by primary key — so that publishing them costs no second write of each
    row (issue 24); the caller keeps ``Run.publish_checkpoint`` below the stamps whose messages are not yet out."""
    if len(keys) > MAX_KEYS:
        raise ValueError(f"register at most {MAX_KEYS} keys per call, got {len(keys)}")
    if not keys:
        return 0, []
    gt_masks = gt_masks or {}
    if session.get_bind().dialect.name == "postgresql":
        new = _insert_postgres(session, run_id, keys, gt_masks, published_at)
    else:
        now = utcnow()
        rows = [
            {"run_id": run_id, "key": k, "status": ImageStatus.queued.value, "attempts": 0,
             "gt_mask_key": gt_masks.get(k), "created_at": now, "published_at": published_at}
            for k in dict.fromkeys(keys)
        ]  # fmt: skip
        stmt = dialect_insert(session, Image).on_conflict_do_nothing(index_elements=["run_id", "key"])
        stmt = stmt.returning(Image.key)
        new = set(session.scalars(stmt, rows))  # executemany: compiled once, sent as multi-row inserts
    queued = set(new)
    old = [k for k in dict.fromkeys(keys) if k not in new]
    if old:  # a resumed run: which of the keys registered before are still unfinished (one index lookup each)
        stmt = select(Image.id, Image.key).where(
            keyed.by_keys(session, run_id=run_id, keys=old), Image.status == ImageStatus.queued.value
        )
        if unpublished_only:
            unpublished: Any = Image.published_at.is_(None)
            if unpublished_since is not None:
                unpublished = or_(unpublished, Image.published_at >= unpublished_since)
            stmt = stmt.where(unpublished)
        resumed = session.execute(stmt).all()
        queued.update(k for _, k in resumed)
        if published_at is not None and resumed:
            session.execute(
                update(Image)
                .where(keyed.by_ids(session, Image.id, [int(i) for i, _ in resumed]))
                .values(published_at=published_at)
                .execution_options(synchronize_session=False)
            )
    return len(new), [k for k in dict.fromkeys(keys) if k in queued]


def _insert_postgres(
    session: Session, run_id: int, keys: Sequence[str], gt_masks: dict[str, str], published_at: datetime | None
) -> set[str]:
    """COPY the keys into a temporary table, then one INSERT … SELECT; returns the keys inserted."""
    conn = session.connection().connection.driver_connection  # psycopg 3, inside the session's transaction
    with conn.cursor() as cur:  # type: ignore[union-attr]
        # ON COMMIT DELETE ROWS: the table lives as long as the pooled connection and is empty in every transaction
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS pp_register (key text, gt_mask_key text) ON COMMIT DELETE ROWS")
        cur.execute("DELETE FROM pp_register")  # nothing left by an earlier statement of this transaction
        with cur.copy("COPY pp_register (key, gt_mask_key) FROM STDIN") as copy:
            for key in keys:
                copy.write_row((key, gt_masks.get(key)))
        cur.execute(
            "INSERT INTO images (run_id, key, status, attempts, gt_mask_key, created_at, published_at) "
            "SELECT %s, key, %s, 0, gt_mask_key, %s, %s FROM pp_register "
            "ON CONFLICT (run_id, key) DO NOTHING RETURNING key",
            (run_id, ImageStatus.queued.value, utcnow(), published_at),
        )
        return {row[0] for row in cur.fetchall()}


@dataclass(frozen=True)
class DoneImage:
    """A finished image for :func:`mark_done_many`: its id, its segments (each with its stored ``mask_key``) and
    the image columns to set (``width``, ``height``, ``meta``, ``content_sha256``, ``worker_host``, ...)."""

    image_id: int
    segments: Sequence[SegmentRecord]
    fields: dict[str, Any]


def mark_done_many(session: Session, *, run_id: int, images: Sequence[DoneImage]) -> None:
    """:func:`~pixelperfect.db.repo.mark_done` for a whole batch of run ``run_id`` in a few executemany statements.

    The segments are upserted on ``(image, variant, prompt)`` and the images marked done exactly as ``mark_done``
    does (safe to repeat: a redelivered batch changes nothing) — one statement per distinct set of columns instead
    of two per image.
    """
    segments = [seg.row(run_id=run_id, image_id=done.image_id) for done in images for seg in done.segments]
    for columns, rows in _by_columns(segments).items():
        stmt = dialect_insert(session, Segment)
        updatable = {c: stmt.excluded[c] for c in columns if c not in ("image_id", "variant", "prompt_index")}
        session.execute(
            stmt.on_conflict_do_update(index_elements=["image_id", "variant", "prompt_index"], set_=updatable), rows
        )
    now = utcnow()
    updates = [{"_id": done.image_id, "_n": len(done.segments), **done.fields} for done in images]
    for columns, params in _by_columns(updates).items():
        fields = {c: bindparam(c, type_=Image.__table__.c[c].type) for c in columns if not c.startswith("_")}
        stmt = (
            update(Image)
            .where(Image.id == bindparam("_id"))
            .values(status=ImageStatus.done.value, error=None, error_reason=None, attempts=Image.attempts + 1,
                    n_segments=bindparam("_n"), finished_at=now, **fields)
        )  # fmt: skip
        session.connection().execute(stmt, params)  # Core executemany: the ORM's bulk path wants plain values


def _by_columns(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows grouped by their set of keys (an executemany needs the same columns in every row)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return groups
