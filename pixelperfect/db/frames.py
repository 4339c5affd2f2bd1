"""Read-only column queries for the notebook API (``pixelperfect.api``): a run's segments and images as columns
of numpy arrays, ready to become a DataFrame without one ORM object (or one dict) per row.

Numeric segment columns come through :mod:`pixelperfect.db.streams`' block reader, the report's bulk column path
(PostgreSQL: one ``bytea`` of float8s per bucket of images; SQLite: ``yield_per`` chunks into ``np.fromiter``),
one variant at a time; the image keys come once per run as an id -> key table and are joined by position in
numpy. Everything reads what is committed: a run still being written returns the images and segments finished so
far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from pixelperfect.db.models import Image, Run, Segment
from pixelperfect.db.queries import done_segments, is_postgresql
from pixelperfect.db.streams import BUCKET_IMAGES, _blocks

#: Numeric segment columns a frame may carry (float32 measures, integer identifiers).
SEGMENT_FLOATS: tuple[str, ...] = (
    "score",
    "stability",
    "consistency_std",
    "consistency_iou",
    "consistency_iou_base",
    "dice",
    "iou",
    "nsd",
    "hd95",
    "box_iou",
    "inside_box",
    "box_dice",
)
SEGMENT_INTS: tuple[str, ...] = ("prompt_index", "area", "chosen")
#: Columns that are not numbers in the database but come back as small codes.
PROMPT_KINDS: tuple[str, ...] = ("box", "point", "auto")
#: Every column :func:`segment_columns` can return.
SEGMENT_COLUMNS: tuple[str, ...] = ("key", "variant", "prompt_kind", *SEGMENT_INTS, *SEGMENT_FLOATS)
#: The columns of an unqualified ``Run.segments()``.
DEFAULT_COLUMNS: tuple[str, ...] = (
    "key",
    "variant",
    "prompt_index",
    "prompt_kind",
    "score",
    "stability",
    "consistency_std",
    "consistency_iou",
    "dice",
    "iou",
    "box_dice",
    "area",
)
IMAGE_COLUMNS: tuple[str, ...] = ("key", "status", "error_reason", "width", "height", "n_segments", "finished_at")


def run_table(session: Session) -> list[dict[str, Any]]:
    """One row per run: name, model, prompt mode, variants, state, creation time and image counts by status."""
    counts: dict[int, dict[str, int]] = {}
    for run_id, status, n in session.execute(
        select(Image.run_id, Image.status, func.count()).group_by(Image.run_id, Image.status)
    ):
        counts.setdefault(run_id, {})[status] = int(n)
    rows = []
    for run in session.scalars(select(Run).order_by(Run.id)):
        c = counts.get(run.id, {})
        rows.append(
            {
                "run": run.name,
                "kind": run.kind,
                "model": run.model,
                "prompt_mode": run.prompt_mode,
                "variants": ",".join(v["name"] for v in run.variants),
                "state": run.state,
                "created_at": run.created_at,
                "images": sum(c.values()),
                "queued": c.get("queued", 0),
                "done": c.get("done", 0),
                "failed": c.get("failed", 0),
                "cancelled": c.get("cancelled", 0),
            }
        )
    return rows


_KEYS_SQL = """SELECT string_agg(id::text, ',' ORDER BY id), string_agg(length(key)::text, ',' ORDER BY id),
 string_agg(key, '' ORDER BY id) FROM images WHERE run_id = :run GROUP BY id / :bucket ORDER BY id / :bucket"""


def image_keys(session: Session, *, run_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, keys)`` of the run's images sorted by id: int64 and an object array of strings.

    PostgreSQL: per bucket of :data:`BUCKET_IMAGES` image ids, three strings — the ids, the keys' lengths and the
    keys run together — cut apart here, so no Python row object is made per image (a million keys: one second
    instead of ten). Elsewhere rows in ``yield_per`` chunks."""
    if is_postgresql(session):
        from sqlalchemy import text

        id_parts, key_parts = [], []
        for ids_text, lengths_text, joined in session.execute(
            text(_KEYS_SQL), {"run": run_id, "bucket": BUCKET_IMAGES}
        ):
            ids = np.array(ids_text.split(","), np.int64)
            ends = np.cumsum(np.array(lengths_text.split(","), np.int64))
            starts = ends - np.diff(ends, prepend=0)
            id_parts.append(ids)
            key_parts.append(np.array([joined[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)],
                                      dtype=object))  # fmt: skip
        if not id_parts:
            return np.zeros(0, np.int64), np.zeros(0, dtype=object)
        return np.concatenate(id_parts), np.concatenate(key_parts)
    rows = session.execute(
        select(Image.id, Image.key).where(Image.run_id == run_id).order_by(Image.id).execution_options(yield_per=50_000)
    ).all()
    ids = np.fromiter((r[0] for r in rows), np.int64, count=len(rows))
    keys = np.array([r[1] for r in rows], dtype=object)
    return ids, keys


def image_rows(session: Session, *, run_id: int, statuses: Sequence[str] | None = None) -> dict[str, list[Any]]:
    """The run's image rows as columns (:data:`IMAGE_COLUMNS`), in key order; ``statuses``: only these."""
    cols = [getattr(Image, c) for c in IMAGE_COLUMNS]
    stmt = select(*cols).where(Image.run_id == run_id).order_by(Image.id)
    if statuses:
        stmt = stmt.where(Image.status.in_(list(statuses)))
    out: dict[str, list[Any]] = {c: [] for c in IMAGE_COLUMNS}
    for part in session.execute(stmt.execution_options(yield_per=50_000)).partitions():
        for name, values in zip(IMAGE_COLUMNS, zip(*part, strict=True), strict=True):
            out[name].extend(values)
    return out


def segment_columns(
    session: Session,
    *,
    run_id: int,
    variant: str,
    columns: Sequence[str],
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> dict[str, np.ndarray]:
    """One variant's segments of the run's done images, in image row then prompt order: per numeric column of
    ``columns`` a float32 (measures; NaN where null) or float64 (integers; NaN where null) array, plus
    ``image_id`` (int64) and ``prompt_kind`` (int8 codes into :data:`PROMPT_KINDS`) when asked.
    ``ranges``: ``{column: (low, high)}`` kept in the database (inclusive; ``None``: open)."""
    numeric = [c for c in columns if c in SEGMENT_FLOATS or c in SEGMENT_INTS]
    kinds = "prompt_kind" in columns  # a code column only when asked: each column is 8 bytes a row on the wire
    kind_code = case(*((Segment.prompt_kind == k, i) for i, k in enumerate(PROMPT_KINDS)), else_=-1)
    values: list[Any] = [Segment.image_id, *([kind_code] if kinds else []), *(getattr(Segment, c) for c in numeric)]
    stmt = (
        select(Segment.id)
        .select_from(Segment)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments([run_id]), Segment.variant == variant)
    )
    for name, (low, high) in (ranges or {}).items():
        if name not in SEGMENT_FLOATS and name not in SEGMENT_INTS:
            raise ValueError(f"where: {name!r} is not a numeric segment column; choose from "
                             f"{', '.join(SEGMENT_FLOATS + SEGMENT_INTS)}")  # fmt: skip
        col = getattr(Segment, name)
        if low is not None:
            stmt = stmt.where(col >= low)
        if high is not None:
            stmt = stmt.where(col <= high)
    order = [Segment.image_id, Segment.prompt_index]
    blocks = list(_blocks(session, stmt, values, order, Segment.image_id // BUCKET_IMAGES, np.float64))
    arr = np.concatenate([np.zeros((0, len(values)), np.float64), *blocks])
    del blocks
    out: dict[str, np.ndarray] = {"image_id": arr[:, 0].astype(np.int64)}
    if kinds:
        out["prompt_kind"] = arr[:, 1].astype(np.int8)
    for i, name in enumerate(numeric, start=2 if kinds else 1):
        out[name] = arr[:, i].astype(np.float32) if name in SEGMENT_FLOATS else arr[:, i].copy()
    return out


def segment_objects(session: Session, *, run_id: int, key: str, variant: str) -> list[dict[str, Any]]:
    """The segments of one image and variant (at most a few dozen rows): prompt, perturbations, scores, mask key."""
    stmt = (
        select(
            Segment.prompt_index,
            Segment.prompt_kind,
            Segment.prompt,
            Segment.perturbations,
            Segment.score,
            Segment.dice,
            Segment.mask_key,
        )
        .join(Image, Image.id == Segment.image_id)
        .where(Image.run_id == run_id, Segment.run_id == run_id, Image.key == key, Segment.variant == variant)
        .order_by(Segment.prompt_index)
    )
    return [dict(r._mapping) for r in session.execute(stmt)]


def image_row(session: Session, *, run_id: int, key: str) -> dict[str, Any] | None:
    """One image row's key, status, reason, size and ground-truth mask URL, or ``None``."""
    row = session.execute(
        select(Image.key, Image.status, Image.error_reason, Image.width, Image.height, Image.gt_mask_key).where(
            Image.run_id == run_id, Image.key == key
        )
    ).first()
    return None if row is None else dict(row._mapping)


def close_keys(session: Session, *, run_id: int, key: str, limit: int = 5000) -> list[str]:
    """Candidate keys to suggest for a missing ``key``: those sharing its first characters, else the first
    ``limit`` keys (close matches are then chosen among them with difflib)."""
    prefix = key[: max(1, len(key) // 2)]
    found = list(
        session.scalars(
            select(Image.key).where(Image.run_id == run_id, Image.key.startswith(prefix, autoescape=True)).limit(limit)
        )
    )
    if found:
        return found
    return list(session.scalars(select(Image.key).where(Image.run_id == run_id).order_by(Image.id).limit(limit)))


def finished_among(session: Session, *, run_id: int, keys: Sequence[str]) -> int:
    """How many of ``keys`` are done or failed in run ``run_id`` (a resumed submit skips them)."""
    wanted = set(keys)
    stmt = select(Image.key).where(Image.run_id == run_id, Image.status.in_(["done", "failed"]))
    return sum(1 for k in session.scalars(stmt.execution_options(yield_per=50_000)) if k in wanted)


def model_throughput(session: Session, *, model: str) -> float | None:
    """Images per second that finished runs of ``model`` recorded: per run, its finished images over the span of
    their ``finished_at`` (runs with at least two finished at different times), pooled over the runs; where no
    run has such a span (one batch finishes its images together), the inverse of the mean summed stage time of
    up to :data:`TIMING_SAMPLE` images (``Image.timings``: stages summed, so without the worker's overlap, a
    slower estimate). ``None`` when nothing was recorded."""
    stmt = (
        select(func.count(), func.min(Image.finished_at), func.max(Image.finished_at))
        .select_from(Image)
        .join(Run, Run.id == Image.run_id)
        .where(Run.model == model, Image.status == "done", Image.finished_at.is_not(None))
        .group_by(Image.run_id)
    )
    images, seconds = 0, 0.0
    for n, first, last in session.execute(stmt):
        span = (last - first).total_seconds() if first and last else 0.0
        if n >= 2 and span > 0:
            images, seconds = images + int(n) - 1, seconds + span
    if seconds:
        return images / seconds
    timings = session.scalars(
        select(Image.timings)
        .join(Run, Run.id == Image.run_id)
        .where(Run.model == model, Image.status == "done", Image.timings.is_not(None))
        .limit(TIMING_SAMPLE)
    ).all()
    totals = [sum(float(v) for v in t.values() if isinstance(v, int | float)) for t in timings if t]
    total = sum(totals)
    return len(totals) / total if total > 0 else None


#: Images whose stage timings stand for a model's throughput when no run recorded a span of finishing times.
TIMING_SAMPLE = 2000
