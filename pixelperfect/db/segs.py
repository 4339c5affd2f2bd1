"""DICOM-SEG rows (``seg_objects``): keyword-only functions taking a session, upserts on ``(image, variant)``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixelperfect.db import keyed
from pixelperfect.db.models import Image, ImageStatus, Segment, SegObject, utcnow
from pixelperfect.db.repo import dialect_insert

_FIELDS = ("object_key", "sop_instance_uid", "segments", "seg_error", "stow_status", "stow_error")


def upsert_segs(session: Session, *, run_id: int, rows: Sequence[dict[str, Any]]) -> int:
    """Insert or update one row per ``(image_id, variant)``; each row dict has ``image_id``, ``variant`` and any
    of :data:`_FIELDS` (a field left out keeps its stored value)."""
    count = 0
    for row in rows:
        values = {"run_id": run_id, "image_id": row["image_id"], "variant": row["variant"], "updated_at": utcnow()}
        changed = {k: row[k] for k in _FIELDS if k in row}
        stmt = dialect_insert(session, SegObject).values(**values, **changed)
        stmt = stmt.on_conflict_do_update(
            index_elements=["image_id", "variant"], set_={**changed, "updated_at": values["updated_at"]}
        )
        session.execute(stmt)
        count += 1
    return count


def missing_segs(
    session: Session, *, run_id: int, image_ids: Sequence[int] | None = None
) -> list[tuple[int, str, str, list[str]]]:
    """``(image_id, image key, variant, mask URLs in prompt order)`` of every done image and variant with
    segments but no stored SEG (never built, or failed with ``seg_error``); only of ``image_ids`` when given."""
    stored = select(SegObject.image_id, SegObject.variant).where(SegObject.object_key.is_not(None))
    query = (
        select(Image.id, Image.key, Segment.variant, Segment.prompt_index, Segment.mask_key)
        .join(Segment, Segment.image_id == Image.id)
        .where(Image.status == ImageStatus.done.value)
        .order_by(Image.id, Segment.variant, Segment.prompt_index)
    )
    if image_ids is not None:  # a batch's images (of this run): by id alone, no run condition to read the run by
        stored = stored.where(keyed.by_ids(session, SegObject.image_id, image_ids))
        query = query.where(keyed.by_ids(session, Image.id, image_ids))
    else:
        stored = stored.where(SegObject.run_id == run_id)
        query = query.where(Image.run_id == run_id)
    have = {(i, v) for i, v in session.execute(stored)}
    rows = session.execute(query)
    out: dict[tuple[int, str], tuple[str, list[str]]] = {}
    for image_id, key, variant, _prompt, mask in rows:
        if (image_id, variant) not in have:
            out.setdefault((image_id, variant), (key, []))[1].append(mask or "")
    return [(i, key, v, masks) for (i, v), (key, masks) in out.items()]


def failed_stows(session: Session, *, run_id: int) -> list[tuple[int, str, str]]:
    """``(image_id, variant, SEG URL)`` of stored SEGs the STOW-RS target has not accepted."""
    rows = session.execute(
        select(SegObject.image_id, SegObject.variant, SegObject.object_key).where(
            SegObject.run_id == run_id, SegObject.stow_status == "failed", SegObject.object_key.is_not(None)
        )
    )
    return [(i, v, str(k)) for i, v, k in rows]


def seg_counts(session: Session, *, run_id: int) -> dict[str, int]:
    """``stored``, ``seg_error``, ``stowed``, ``stow_failed`` counts of the run's SEG rows."""

    def count(*where: Any) -> int:
        return int(
            session.scalar(select(func.count()).select_from(SegObject).where(SegObject.run_id == run_id, *where)) or 0
        )

    return {
        "stored": count(SegObject.object_key.is_not(None)),
        "seg_error": count(SegObject.seg_error.is_not(None)),
        "stowed": count(SegObject.stow_status == "stored"),
        "stow_failed": count(SegObject.stow_status == "failed"),
    }


def seg_rows(session: Session, *, run_id: int) -> list[SegObject]:
    return list(session.scalars(select(SegObject).where(SegObject.run_id == run_id).order_by(SegObject.id)))


def stowed_segs(session: Session, *, run_id: int, chunk: int = 5_000) -> Iterator[tuple[str, str, str]]:
    """``(image key, variant, SOPInstanceUID)`` of every SEG of the run that its STOW-RS target accepted, in image
    key order, streamed ``chunk`` rows at a time (a PACS keeps them after the run is deleted here)."""
    stmt = (
        select(Image.key, SegObject.variant, SegObject.sop_instance_uid)
        .join(Image, Image.id == SegObject.image_id)
        .where(SegObject.run_id == run_id, SegObject.stow_status == "stored")
        .order_by(Image.key, SegObject.variant)
        .execution_options(yield_per=chunk)
    )
    for key, variant, uid in session.execute(stmt):
        yield str(key), str(variant), str(uid or "")
