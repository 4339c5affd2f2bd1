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
from sqlalchemy import BigInteger, Integer, SmallInteger, case, cast, func, select
from sqlalchemy.orm import Session

from pixelperfect.db.models import Image, Run, Segment
from pixelperfect.db.queries import done_segments, is_postgresql
from pixelperfect.db.streams import BUCKET_IMAGES, _blocks, float8

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


def variant_columns(
    session: Session,
    *,
    run_id: int,
    variants: Sequence[str],
    columns: Sequence[str],
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """:func:`segment_columns` of each of ``variants``, one after the other: the arrays concatenated (variant, then
    image row, then prompt order) and the rows per variant. On PostgreSQL one binary ``COPY`` of every variant's
    rows (:func:`_copy_segments`); elsewhere one query per variant."""
    if is_postgresql(session):
        return _copy_segments(session, run_id=run_id, variants=variants, columns=columns, ranges=ranges)
    parts: dict[str, list[np.ndarray]] = {}
    lengths = []
    for variant in variants:
        cols = segment_columns(session, run_id=run_id, variant=variant, columns=columns, ranges=ranges)
        lengths.append(len(cols["image_id"]))
        for name, arr in cols.items():
            parts.setdefault(name, []).append(arr)
    return {name: np.concatenate(arrs) for name, arrs in parts.items()}, lengths


#: PostgreSQL's binary COPY header (signature, flags, extension length) and its trailer (a field count of -1)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
#: Bytes of COPY data parsed at a time: rows are cut from blocks this size (the data never held whole)
_COPY_PARSE_BYTES = 8 << 20


def _copy_segments(
    session: Session,
    *,
    run_id: int,
    variants: Sequence[str],
    columns: Sequence[str],
    ranges: Mapping[str, tuple[float | None, float | None]] | None,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """PostgreSQL: the segments of the run's done images in ``variants`` as one ``COPY (SELECT …) TO STDOUT
    (FORMAT binary)`` of fixed-width, never-null fields (NULL measures as NaN), read into a numpy structured view
    8 MiB at a time and sorted here by (variant, image id, prompt): no Python object per row and no server-side
    aggregation (issue 29: ``Run.segments()`` of a million images)."""
    from sqlalchemy.dialects import postgresql

    numeric = [c for c in columns if c in SEGMENT_FLOATS or c in SEGMENT_INTS]
    kinds = "prompt_kind" in columns
    variant_code = case(*((Segment.variant == v, i) for i, v in enumerate(variants)), else_=-1)
    kind_code = case(*((Segment.prompt_kind == k, i) for i, k in enumerate(PROMPT_KINDS)), else_=-1)
    fields: list[tuple[str, Any, str]] = [
        ("image_id", cast(Segment.image_id, BigInteger), ">i8"),
        ("prompt_order", cast(Segment.prompt_index, Integer), ">i4"),
        ("variant", cast(variant_code, SmallInteger), ">i2"),
        *([("prompt_kind", cast(kind_code, SmallInteger), ">i2")] if kinds else []),
        *((name, float8(getattr(Segment, name)), ">f8") for name in numeric),
    ]
    stmt = (
        select(*(expr.label(name) for name, expr, _ in fields))
        .select_from(Segment)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments([run_id]), Segment.variant.in_(list(variants)))
    )
    for name, (low, high) in (ranges or {}).items():
        if name not in SEGMENT_FLOATS and name not in SEGMENT_INTS:
            raise ValueError(f"where: {name!r} is not a numeric segment column; choose from "
                             f"{', '.join(SEGMENT_FLOATS + SEGMENT_INTS)}")  # fmt: skip
        col = getattr(Segment, name)
        if low is not None:
            stmt = stmt.where(col >= float(low))
        if high is not None:
            stmt = stmt.where(col <= float(high))
    # literal values: run id, variant names of the run, floats; COPY takes no bound parameters
    sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    row = np.dtype([("count", ">i2")] + [x for name, _, fmt in fields for x in ((f"n_{name}", ">i4"), (name, fmt))])
    parts: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in fields}
    pending = bytearray()
    header = True
    conn = session.connection().connection.driver_connection  # psycopg 3, inside the session's transaction
    with conn.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT binary)") as copy:  # type: ignore[union-attr]
        for block in copy:
            pending += block
            if header and len(pending) >= len(_COPY_HEADER):
                if bytes(pending[:11]) != _COPY_HEADER[:11]:
                    raise RuntimeError("PostgreSQL's binary COPY began without its signature")
                del pending[: len(_COPY_HEADER)]
                header = False
            if not header and len(pending) >= _COPY_PARSE_BYTES:
                _take_rows(pending, row, parts)
    if header:
        raise RuntimeError("PostgreSQL's binary COPY ended before its header")
    _take_rows(pending, row, parts)
    if bytes(pending) != _COPY_TRAILER:
        raise RuntimeError(f"PostgreSQL's binary COPY ended with {len(pending)} unread bytes")
    cols = {name: np.concatenate(arrs) if arrs else np.zeros(0, fmt) for (name, _, fmt), arrs in
            zip(fields, parts.values(), strict=True)}  # fmt: skip
    order = np.lexsort((cols["prompt_order"], cols["image_id"], cols["variant"]))
    lengths = np.bincount(cols["variant"], minlength=len(variants)).tolist()
    out: dict[str, np.ndarray] = {"image_id": cols["image_id"][order].astype(np.int64)}
    if kinds:
        out["prompt_kind"] = cols["prompt_kind"][order].astype(np.int8)
    for name in numeric:
        values = cols[name][order]
        out[name] = values.astype(np.float32) if name in SEGMENT_FLOATS else values.astype(np.float64)
    return out, lengths


def _take_rows(pending: bytearray, row: np.dtype, parts: dict[str, list[np.ndarray]]) -> None:
    """Cut the whole rows at the front of ``pending`` into ``parts`` (native-endian copies); the rest stays."""
    n = len(pending) // row.itemsize
    if not n:
        return
    view = np.frombuffer(bytes(pending[: n * row.itemsize]), row)
    if n and not (view["count"] == len(parts)).all():
        raise RuntimeError("a row of PostgreSQL's binary COPY has an unexpected number of fields")
    for name, arrs in parts.items():
        arrs.append(view[name].astype(view.dtype[name].newbyteorder("=")))
    del pending[: n * row.itemsize]


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
