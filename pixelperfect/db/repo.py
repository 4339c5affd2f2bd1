"""Keyword-only repository functions taking a session. Every write is an upsert on the identity keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pixelperfect.db import keyed
from pixelperfect.db.models import Annotation, Image, ImageStatus, Run, Segment, utcnow

# SQLite caps bound parameters per statement (32766 in current builds); 500 rows x ~25 columns stays below it.
INSERT_CHUNK = 500


def dialect_insert(session: Session, table: Any) -> Any:
    """``INSERT`` of the session's dialect (PostgreSQL or SQLite), which has ``on_conflict_do_*`` for upserts."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect!r} (use PostgreSQL or SQLite)")


def _chunks(rows: Sequence[dict[str, Any]], size: int = INSERT_CHUNK) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


# --- runs -----------------------------------------------------------------------------------------------------


def get_run(session: Session, *, name: str) -> Run | None:
    return session.scalars(select(Run).where(Run.name == name)).one_or_none()


def get_run_by_id(session: Session, *, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def create_run(session: Session, *, name: str, fields: dict[str, Any]) -> Run:
    """Insert a run row, or return the existing one (a concurrent producer may have created it)."""
    stmt = dialect_insert(session, Run).values(name=name, created_at=utcnow(), **fields)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
    run = get_run(session, name=name)
    if run is None:  # pragma: no cover - only if deleted between the two statements
        raise RuntimeError(f"run {name!r} vanished while being created")
    return run


def list_runs(session: Session) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.id)))


# --- images ---------------------------------------------------------------------------------------------------


def add_images(session: Session, *, run_id: int, keys: Sequence[str], gt_masks: dict[str, str] | None = None) -> int:
    """Register images as queued; existing ``(run, key)`` rows are left as they are. Returns rows inserted."""
    gt_masks = gt_masks or {}
    now = utcnow()
    rows = [
        {
            "run_id": run_id,
            "key": key,
            "status": ImageStatus.queued.value,
            "attempts": 0,
            "gt_mask_key": gt_masks.get(key),
            "created_at": now,
        }
        for key in keys
    ]
    inserted = 0
    for chunk in _chunks(rows):
        stmt = dialect_insert(session, Image).values(list(chunk))
        stmt = stmt.on_conflict_do_nothing(index_elements=["run_id", "key"])
        inserted += len(session.execute(stmt.returning(Image.id)).all())  # rowcount is -1 here on psycopg
    return inserted


def keys_with_status(session: Session, *, run_id: int, statuses: Sequence[str], reason: str | None = None) -> list[str]:
    stmt = select(Image.key).where(Image.run_id == run_id, Image.status.in_(statuses))
    if reason is not None:
        stmt = stmt.where(Image.error_reason == reason)
    return list(session.scalars(stmt.order_by(Image.id)))


def images_by_key(session: Session, *, run_id: int, keys: Sequence[str]) -> dict[str, Image]:
    rows = session.scalars(select(Image).where(keyed.by_keys(session, run_id=run_id, keys=keys)))
    return {row.key: row for row in rows}


def requeue(session: Session, *, run_id: int, keys: Sequence[str]) -> int:
    """Mark failed images queued again (for ``retry``), free of the leases of the messages that failed them."""
    result = session.execute(
        update(Image)
        .where(keyed.by_keys(session, run_id=run_id, keys=keys), Image.status == ImageStatus.failed.value)
        .values(status=ImageStatus.queued.value, error=None, error_reason=None, lease_owner=None, lease_expires=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def mark_done(
    session: Session,
    *,
    image_id: int,
    segments: Sequence[dict[str, Any]],
    fields: dict[str, Any],
) -> None:
    """Upsert the image's segments, then mark it done. Safe to repeat (a redelivered task changes nothing)."""
    for chunk in _chunks(list(segments)):
        stmt = dialect_insert(session, Segment).values(list(chunk))
        updatable = {c: stmt.excluded[c] for c in chunk[0] if c not in ("image_id", "variant", "prompt_index")}
        session.execute(
            stmt.on_conflict_do_update(index_elements=["image_id", "variant", "prompt_index"], set_=updatable)
        )
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(
            status=ImageStatus.done.value,
            error=None,
            error_reason=None,
            attempts=Image.attempts + 1,
            n_segments=len(segments),
            finished_at=utcnow(),
            **fields,
        )
    )


def set_timings(session: Session, *, timings: dict[int, dict[str, float]]) -> None:
    """Write ``Image.timings`` (stage -> seconds) of several images in one executemany UPDATE by primary key."""
    if timings:
        session.execute(update(Image), [{"id": image_id, "timings": t} for image_id, t in timings.items()])


def mark_failed(
    session: Session, *, image_id: int, reason: str, error: str, fields: dict[str, Any] | None = None
) -> None:
    """Record a failure with its reason; a done image is never downgraded (a late duplicate cannot undo it)."""
    session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status != ImageStatus.done.value)
        .values(
            status=ImageStatus.failed.value,
            error_reason=reason[:64],
            error=error[:4000],
            attempts=Image.attempts + 1,
            finished_at=utcnow(),
            **(fields or {}),
        )
    )


# --- annotations ----------------------------------------------------------------------------------------------


#: Point annotations are numbered from here so they never collide with the box indices of the same image.
POINT_INDEX_BASE = 1_000_000


def _add_annotation_rows(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert annotation rows; rows already there (same run, key, index) are left as they are."""
    for chunk in _chunks(rows):
        stmt = dialect_insert(session, Annotation).values(list(chunk))
        session.execute(stmt.on_conflict_do_nothing(index_elements=["run_id", "image_key", "index"]))
    return len(rows)


def add_annotations(session: Session, *, run_id: int, boxes: dict[str, list[list[float]]]) -> int:
    """Store ground-truth boxes (XYXY) per image key; re-importing the same boxes changes nothing."""
    return _add_annotation_rows(session, [
        {"run_id": run_id, "image_key": key, "index": i, "kind": "box",
         "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "label": 1}
        for key, key_boxes in boxes.items()
        for i, b in enumerate(key_boxes)
    ])  # fmt: skip


def mark_labelled(session: Session, *, run_id: int, keys: Sequence[str]) -> int:
    """Flag ``keys`` as labelled images of the run (they appear in its annotation file, with or without boxes: an
    RSNA ``Target=0`` row is a labelled negative). Idempotent; returns the number of rows matched."""
    total = 0
    for start in range(0, len(keys), INSERT_CHUNK):
        chunk = list(keys[start : start + INSERT_CHUNK])
        result = session.execute(
            update(Image).where(keyed.by_keys(session, run_id=run_id, keys=chunk)).values(labelled=True)
        )
        total += int(getattr(result, "rowcount", 0) or 0)
    return total


def add_points(session: Session, *, run_id: int, points: dict[str, list[list[float]]]) -> int:
    """Store point prompts ``{key: [[x, y, label], ...]}`` as ``kind='point'`` annotations (idempotent)."""
    return _add_annotation_rows(session, [
        {"run_id": run_id, "image_key": key, "index": POINT_INDEX_BASE + i, "kind": "point",
         "x1": float(p[0]), "y1": float(p[1]), "x2": None, "y2": None, "label": int(p[2]) if len(p) > 2 else 1}
        for key, key_points in points.items()
        for i, p in enumerate(key_points)
    ])  # fmt: skip


def points_for(session: Session, *, run_id: int, keys: Sequence[str]) -> dict[str, list[list[float]]]:
    """Point prompts ``{key: [[x, y, label], ...]}`` of the given images, in import order."""
    rows = session.execute(
        select(Annotation.image_key, Annotation.x1, Annotation.y1, Annotation.label)
        .where(Annotation.run_id == run_id, Annotation.image_key.in_(list(keys)), Annotation.kind == "point")
        .order_by(Annotation.image_key, Annotation.index)
    )
    out: dict[str, list[list[float]]] = {}
    for key, x, y, label in rows:
        out.setdefault(key, []).append([float(x), float(y), float(label)])
    return out


#: ``annotations.index`` of the first exemplar box of an image (after its ground-truth boxes and points).
EXEMPLAR_INDEX_BASE = 2_000_000


def add_exemplars(session: Session, *, run_id: int, exemplars: dict[str, list[list[float]]]) -> int:
    """Store concept exemplars ``{key: [[x1, y1, x2, y2, label], ...]}`` (label 1 positive, 0 negative) as
    ``kind='exemplar'`` annotations (idempotent). They are prompts, never ground truth: ``boxes_for`` and the
    report read only ``kind='box'``."""
    return _add_annotation_rows(session, [
        {"run_id": run_id, "image_key": key, "index": EXEMPLAR_INDEX_BASE + i, "kind": "exemplar",
         "x1": float(e[0]), "y1": float(e[1]), "x2": float(e[2]), "y2": float(e[3]), "label": int(e[4])}
        for key, rows in exemplars.items()
        for i, e in enumerate(rows)
    ])  # fmt: skip


def exemplars_for(session: Session, *, run_id: int, keys: Sequence[str]) -> dict[str, list[list[float]]]:
    """Concept exemplars ``{key: [[x1, y1, x2, y2, label], ...]}`` of the given images, in import order."""
    rows = session.execute(
        select(Annotation.image_key, Annotation.x1, Annotation.y1, Annotation.x2, Annotation.y2, Annotation.label)
        .where(Annotation.run_id == run_id, Annotation.image_key.in_(list(keys)), Annotation.kind == "exemplar")
        .order_by(Annotation.image_key, Annotation.index)
    )
    out: dict[str, list[list[float]]] = {}
    for key, x1, y1, x2, y2, label in rows:
        out.setdefault(key, []).append([float(x1), float(y1), float(x2 or 0.0), float(y2 or 0.0), float(label)])
    return out


def boxes_for(session: Session, *, run_id: int, keys: Sequence[str]) -> dict[str, list[list[float]]]:
    """Ground-truth boxes (XYXY) of the given images, in import order."""
    rows = session.execute(
        select(Annotation.image_key, Annotation.x1, Annotation.y1, Annotation.x2, Annotation.y2)
        .where(Annotation.run_id == run_id, Annotation.image_key.in_(list(keys)), Annotation.kind == "box")
        .order_by(Annotation.image_key, Annotation.index)
    )
    out: dict[str, list[list[float]]] = {}
    for key, x1, y1, x2, y2 in rows:
        out.setdefault(key, []).append([float(x1), float(y1), float(x2 or 0.0), float(y2 or 0.0)])
    return out


def count_annotations(session: Session, *, run_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(Annotation).where(Annotation.run_id == run_id)) or 0)


# --- status ---------------------------------------------------------------------------------------------------


def status_counts(session: Session, *, run_id: int) -> dict[str, int]:
    """Images by status: ``queued``, ``done`` and ``failed`` always, ``cancelled`` when the run has any."""
    rows = session.execute(select(Image.status, func.count()).where(Image.run_id == run_id).group_by(Image.status))
    counts = {s.value: 0 for s in ImageStatus if s is not ImageStatus.cancelled}
    counts.update({status: int(n) for status, n in rows})
    return counts


def failure_counts(session: Session, *, run_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Image.error_reason, func.count())
        .where(Image.run_id == run_id, Image.status == ImageStatus.failed.value)
        .group_by(Image.error_reason)
    )
    return {str(reason): int(n) for reason, n in rows}


def segment_count(session: Session, *, run_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(Segment).where(Segment.run_id == run_id)) or 0)


def progress_window(session: Session, *, run_id: int) -> tuple[datetime | None, datetime | None, int]:
    """First and last finish time and the number of finished images, for images/s and ETA."""
    first, last, n = session.execute(
        select(func.min(Image.finished_at), func.max(Image.finished_at), func.count(Image.finished_at)).where(
            Image.run_id == run_id, Image.finished_at.is_not(None)
        )
    ).one()
    return first, last, int(n or 0)


def stage_timings(session: Session, *, run_id: int, limit: int = 5000) -> tuple[dict[str, float], int]:
    """Summed per-image stage seconds over a sample of up to ``limit`` done images, and the sample size.

    A sample, not the whole run: the shares of the stages settle after a few hundred images, and summing JSON over
    millions of rows on every refresh of ``status --watch`` would cost more than the answer is worth.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    rows = session.scalars(
        select(Image.timings)
        .where(Image.run_id == run_id, Image.status == ImageStatus.done.value, Image.timings.is_not(None))
        .limit(limit)
    )
    totals: dict[str, float] = {}
    n = 0
    for timings in rows:
        if not isinstance(timings, dict):
            continue
        n += 1
        for stage, seconds in timings.items():
            if isinstance(seconds, (int, float)):
                totals[stage] = totals.get(stage, 0.0) + float(seconds)
    return totals, n
