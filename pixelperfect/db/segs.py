"""DICOM-SEG rows (``seg_objects``): keyword-only functions taking a session, upserts on ``(image, variant)``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from pixelperfect.db import keyed
from pixelperfect.db.models import Image, ImageStatus, Segment, SegObject, utcnow
from pixelperfect.db.repo import dialect_insert

_FIELDS = (
    "object_key", "sop_instance_uid", "segments", "seg_error", "stow_status", "stow_error",
    "sr_key", "sr_sop_instance_uid", "sr_error", "sr_stow_status", "sr_stow_error",
)  # fmt: skip
#: The ``segments`` columns a TID 1500 SR reports (``pipeline/output/dicomsr.py`` ``SegmentMeasures``).
MEASURES = ("prompt_index", "score", "stability", "consistency_std", "consistency_iou", "dice", "hd95", "surface_unit")


@dataclass
class MissingSeg:
    """A done image and variant whose SEG (or, with ``with_sr``, SR) is missing: its masks in prompt order, the
    segments' measurements (``MEASURES`` per prompt) and the image's pixel spacing in mm (``images.meta``)."""

    image_id: int
    key: str
    variant: str
    masks: list[str] = field(default_factory=list)
    measures: list[dict[str, Any]] = field(default_factory=list)
    spacing: tuple[float, float] | None = None


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
    session: Session, *, run_id: int, image_ids: Sequence[int] | None = None, with_sr: bool = False
) -> list[MissingSeg]:
    """Every done image and variant with segments but no stored SEG (never built, or failed with ``seg_error``) —
    or, with ``with_sr``, no stored SR either — only of ``image_ids`` when given."""
    stored = select(SegObject.image_id, SegObject.variant).where(SegObject.object_key.is_not(None))
    if with_sr:
        stored = stored.where(SegObject.sr_key.is_not(None))
    columns = [getattr(Segment, name) for name in MEASURES]
    query = (
        select(Image.id, Image.key, Image.meta, Segment.variant, Segment.mask_key, *columns)
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
    out: dict[tuple[int, str], MissingSeg] = {}
    for image_id, key, meta, variant, mask, *values in session.execute(query):
        if (image_id, variant) in have:
            continue
        item = out.get((image_id, variant))
        if item is None:
            spacing = (meta or {}).get("spacing_mm")
            item = out[(image_id, variant)] = MissingSeg(
                image_id, key, variant, spacing=(float(spacing[0]), float(spacing[1])) if spacing else None
            )
        item.masks.append(mask or "")
        item.measures.append(dict(zip(MEASURES, values, strict=True)))
    return list(out.values())


def failed_stows(session: Session, *, run_id: int) -> list[tuple[int, str, str, str]]:
    """``(image_id, variant, "seg" | "sr", URL)`` of stored SEGs and SRs the STOW target has not accepted."""
    seg = select(SegObject.image_id, SegObject.variant, SegObject.object_key).where(
        SegObject.run_id == run_id, SegObject.stow_status == "failed", SegObject.object_key.is_not(None)
    )
    sr = select(SegObject.image_id, SegObject.variant, SegObject.sr_key).where(
        SegObject.run_id == run_id, SegObject.sr_stow_status == "failed", SegObject.sr_key.is_not(None)
    )
    return [(i, v, "seg", str(k)) for i, v, k in session.execute(seg)] + [
        (i, v, "sr", str(k)) for i, v, k in session.execute(sr)
    ]


def seg_counts(session: Session, *, run_id: int) -> dict[str, int]:
    """``stored``, ``seg_error``, ``stowed``, ``stow_failed`` counts of the run's SEG rows, and the same of its SRs
    (``sr_stored``, ``sr_error``, ``sr_stowed``, ``sr_stow_failed``)."""

    def count(*where: Any) -> int:
        return int(
            session.scalar(select(func.count()).select_from(SegObject).where(SegObject.run_id == run_id, *where)) or 0
        )

    return {
        "stored": count(SegObject.object_key.is_not(None)),
        "seg_error": count(SegObject.seg_error.is_not(None)),
        "stowed": count(SegObject.stow_status == "stored"),
        "stow_failed": count(SegObject.stow_status == "failed"),
        "sr_stored": count(SegObject.sr_key.is_not(None)),
        "sr_error": count(SegObject.sr_error.is_not(None)),
        "sr_stowed": count(SegObject.sr_stow_status == "stored"),
        "sr_stow_failed": count(SegObject.sr_stow_status == "failed"),
    }


def seg_rows(session: Session, *, run_id: int) -> list[SegObject]:
    return list(session.scalars(select(SegObject).where(SegObject.run_id == run_id).order_by(SegObject.id)))


def stowed_segs(session: Session, *, run_id: int, chunk: int = 5_000) -> Iterator[tuple[str, str, str]]:
    """``(image key, variant, SOPInstanceUID)`` of every SEG and SR of the run that its STOW target accepted, in
    image key order, streamed ``chunk`` rows at a time (a PACS keeps them after the run is deleted here)."""
    stmt = (
        select(
            Image.key,
            SegObject.variant,
            SegObject.sop_instance_uid,
            SegObject.stow_status,
            SegObject.sr_sop_instance_uid,
            SegObject.sr_stow_status,
        )
        .join(Image, Image.id == SegObject.image_id)
        .where(SegObject.run_id == run_id, (SegObject.stow_status == "stored") | (SegObject.sr_stow_status == "stored"))
        .order_by(Image.key, SegObject.variant)
        .execution_options(yield_per=chunk)
    )
    for key, variant, uid, status, sr_uid, sr_status in session.execute(stmt):
        if status == "stored":
            yield str(key), str(variant), str(uid or "")
        if sr_status == "stored":
            yield str(key), str(variant), str(sr_uid or "")


#: The segment scores ``pixelperfect review --below`` may name (higher is better for each).
REVIEW_METRICS = ("score", "stability", "consistency_iou", "consistency_iou_base", "dice", "iou", "nsd", "box_iou")


def below_thresholds(
    session: Session, *, run_id: int, below: dict[str, float], chunk: int = 5_000
) -> Iterator[tuple[str, str, int, dict[str, float], str | None]]:
    """``(image key, variant, prompt index, {metric: value below its threshold}, SEG SOPInstanceUID)`` of every
    segment of the run's done images with a named metric below its threshold, in image key order, streamed (SQL
    only: one indexed pass over the run's segments, no pixels)."""
    unknown = [m for m in below if m not in REVIEW_METRICS]
    if unknown or not below:
        raise ValueError(f"--below {', '.join(unknown) or '(none)'}: choose from {', '.join(REVIEW_METRICS)}")
    columns = [getattr(Segment, m) for m in below]
    condition = or_(*(getattr(Segment, m) < t for m, t in below.items()))
    stmt = (
        select(Image.key, Segment.variant, Segment.prompt_index, SegObject.sop_instance_uid, *columns)
        .join(Image, Image.id == Segment.image_id)
        .outerjoin(SegObject, (SegObject.image_id == Segment.image_id) & (SegObject.variant == Segment.variant))
        .where(Segment.run_id == run_id, Image.status == ImageStatus.done.value, condition)
        .order_by(Image.key, Segment.variant, Segment.prompt_index)
        .execution_options(yield_per=chunk)
    )
    for key, variant, prompt, seg_uid, *values in session.execute(stmt):
        low = {m: float(v) for (m, t), v in zip(below.items(), values, strict=True) if v is not None and v < t}
        yield str(key), str(variant), int(prompt), low, seg_uid
