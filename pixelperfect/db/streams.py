"""Row streams for the evaluation, for what a ``GROUP BY`` cannot give: paired values, rank correlations,
the detection metric's boxes, and seeded samples.

Rows arrive in chunks of :data:`CHUNK` (``yield_per``: a server-side cursor on PostgreSQL) and go straight into
numpy arrays, never into ORM objects or one dict per segment, so memory is a few arrays of the compared columns.
Where even that would grow with the run (the forest's features, scatter points), :func:`sample_clause` keeps a
seeded subsample in the database.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import BigInteger, Float, and_, cast, func, literal, literal_column, or_, select
from sqlalchemy.orm import Session, aliased

from pixelperfect.db.models import Annotation, Image, ImageStatus, Segment
from pixelperfect.db.queries import column, done_segments, is_postgresql

#: Rows per fetch of a stream: 50,000 rows × a few float columns is a few MB in flight.
CHUNK = 50_000
#: Modulus of the seeded hash sample (a prime); a row is kept when ``(id * _MULT + seed * _SEED_MULT) % _MOD`` is
#: below ``_MOD`` × the kept fraction.
_MOD = 1_000_003
_MULT = 2_654_435_761
_SEED_MULT = 40_503


def _arrays(
    session: Session, base: Any, values: Sequence[Any], order: Sequence[Any], bucket: Any, dtype: Any
) -> np.ndarray:
    """All of :func:`_blocks` in one array."""
    return np.concatenate([np.zeros((0, len(values)), dtype), *_blocks(session, base, values, order, bucket, dtype)])


def _blocks(
    session: Session, base: Any, values: Sequence[Any], order: Sequence[Any], bucket: Any, dtype: Any
) -> Iterator[np.ndarray]:
    """``(n, len(values))`` arrays of ``dtype``, one per fetch (``NULL`` -> NaN): the ``values`` of the rows of
    ``base`` (a select whose FROM, joins and WHERE count, not its columns), sorted by the integer ``order`` columns.

    On PostgreSQL each ``bucket`` (an expression grouping whole images, e.g. ``image_id / 20000``) comes back as
    one ``bytea`` of big-endian float8s (``string_agg(float8send(…))``) that numpy reads in one call, and the rows
    are sorted here: a server-side cursor or COPY would hand Python one object per row, most of a million-image
    report's time. Elsewhere (SQLite) rows stream in ``yield_per`` chunks in SQL order. One block is held at a
    time unless the caller keeps them.
    """
    width = len(values)
    if not is_postgresql(session):
        stmt = base.with_only_columns(*values).order_by(*order).execution_options(yield_per=CHUNK)
        for part in session.execute(stmt).partitions():
            try:  # one C-level pass over the chunk's values
                flat = np.fromiter(itertools.chain.from_iterable(part), dtype, count=len(part) * width)
            except TypeError:  # a NULL among them: the slower path turns it into NaN
                flat = np.array([tuple(r) for r in part], dtype)
            yield flat.reshape(-1, width)
        return
    cols = [*order, *values]
    labeled = [float8(c).label(f"c{i}") for i, c in enumerate(cols)]
    sub = base.with_only_columns(*labeled, bucket.label("bucket")).subquery()
    blob: Any = func.float8send(sub.c.c0)
    for i in range(1, len(cols)):
        blob = blob.op("||")(func.float8send(sub.c[f"c{i}"]))
    stmt = (
        select(func.string_agg(blob, literal_column("''::bytea")))
        .group_by(sub.c.bucket)
        .order_by(sub.c.bucket)
        .execution_options(yield_per=1)
    )
    for (data,) in session.execute(stmt):  # buckets in image order; rows sorted within each
        block = np.frombuffer(data or b"", ">f8").reshape(-1, len(cols))
        if order:
            block = block[np.lexsort(block[:, : len(order)].T[::-1])]
        yield block[:, len(order) :].astype(dtype)


def float8(column: Any) -> Any:
    """``column`` as a non-null PostgreSQL float8 (``NULL`` -> ``'NaN'``), for :func:`_arrays`' byte strings."""
    return func.coalesce(cast(column, Float(precision=53)), literal_column("'NaN'::float8"))


#: Images per bucket of the PostgreSQL byte-string streams: 20,000 images × 4 segments × a few float8s ~ 1 MB.
BUCKET_IMAGES = 20_000


def _key_order(session: Session, key: Any) -> Any:
    """``key`` ordered by code point on either database (PostgreSQL's collation may differ from Python's)."""
    return key.collate("C") if is_postgresql(session) else key


def paired_arrays(
    session: Session, *, a: tuple[int, str], b: tuple[int, str], metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(values in a, values in b)``, float32 ``(n,)`` each: :func:`paired_columns` for one metric."""
    return paired_columns(session, a=a, b=b, metrics=[metric])[metric]


def paired_columns(
    session: Session, *, a: tuple[int, str], b: tuple[int, str], metrics: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All of :func:`paired_blocks`, per metric ``(values in a, values in b)`` where both are present."""
    arr = np.concatenate(
        [np.zeros((0, 2 * len(metrics)), np.float32), *paired_blocks(session, a=a, b=b, metrics=metrics)]
    )
    out = {}
    for i, m in enumerate(metrics):
        va, vb = arr[:, 2 * i], arr[:, 2 * i + 1]
        keep = np.isfinite(va) & np.isfinite(vb)
        out[m] = (va[keep].copy(), vb[keep].copy())
    return out


def paired_blocks(
    session: Session, *, a: tuple[int, str], b: tuple[int, str], metrics: Sequence[str]
) -> Iterator[np.ndarray]:
    """Blocks of float32 ``(n, 2 × len(metrics))`` rows = per metric (value in a, value in b), NaN where null, for
    every prompt segmented in both ``a`` and ``b`` (each a ``(run id, variant)``), matched on image key and prompt
    index, at least one metric present in both, in image row then prompt order (image rows are added in key order).
    One join reads the compared columns of all the metrics; one block is held at a time.

    Automatic-mode segments are excluded: their prompt index ranks masks, it does not name the same prompt.
    """
    cols = [column(m) for m in metrics]
    sa, sb = aliased(Segment), aliased(Segment)
    ia, ib = aliased(Image), aliased(Image)
    col_a = [getattr(sa, c.key) for c in cols]
    col_b = [getattr(sb, c.key) for c in cols]
    same_run = a[0] == b[0]
    stmt = select(sa.id).select_from(sa).join(ia, ia.id == sa.image_id)
    if same_run:  # variants of one run: the same image row
        stmt = stmt.join(sb, and_(sb.image_id == sa.image_id, sb.prompt_index == sa.prompt_index, sb.variant == b[1]))
    else:
        stmt = stmt.join(ib, and_(ib.key == ia.key, ib.run_id == b[0])).join(
            sb, and_(sb.image_id == ib.id, sb.prompt_index == sa.prompt_index, sb.variant == b[1])
        )
        stmt = stmt.where(ib.status == ImageStatus.done.value)
    stmt = stmt.where(
        sa.run_id == a[0],
        ia.run_id == a[0],
        sb.run_id == b[0],
        sa.variant == a[1],
        sa.prompt_kind != "auto",
        sb.prompt_kind != "auto",
        ia.status == ImageStatus.done.value,
        or_(*(and_(x.is_not(None), y.is_not(None)) for x, y in zip(col_a, col_b, strict=True))),
    )
    # image rows are added in key order: image row order is key order, without sorting strings
    values = [v for pair in zip(col_a, col_b, strict=True) for v in pair]
    yield from _blocks(session, stmt, values, [ia.id, sa.prompt_index], ia.id // BUCKET_IMAGES, np.float32)


def own_pairs(session: Session, *, run_id: int, variant: str, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Two measures of the same segments of one run × variant (e.g. the prompt box's Dice and the mask's), where
    both are non-null: float32 ``(n,)`` each, in image row then prompt order."""
    arr = np.concatenate(
        [np.zeros((0, 2), np.float32), *own_pair_blocks(session, run_id=run_id, variant=variant, a=a, b=b)]
    )
    return arr[:, 0].copy(), arr[:, 1].copy()


def own_pair_blocks(session: Session, *, run_id: int, variant: str, a: str, b: str) -> Iterator[np.ndarray]:
    """:func:`own_pairs` as float32 ``(n, 2)`` blocks, one held at a time."""
    col_a, col_b = column(a), column(b)
    stmt = (
        select(Segment.id)
        .select_from(Segment)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments([run_id]), Segment.variant == variant, col_a.is_not(None), col_b.is_not(None))
    )
    order = [Segment.image_id, Segment.prompt_index]
    yield from _blocks(session, stmt, [col_a, col_b], order, Segment.image_id // BUCKET_IMAGES, np.float32)


def metric_columns(
    session: Session, *, run_id: int, variant: str, metrics: Sequence[str], required: str, where: Any = None
) -> np.ndarray:
    """``(n, len(metrics))`` float64 of one run × variant's segments where ``required`` is non-null (other
    columns: NaN where null), in no particular order; ``where``: an extra clause (e.g. :func:`sample_clause`)."""
    stmt = (
        select(Segment.id)
        .select_from(Segment)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments([run_id]), Segment.variant == variant, column(required).is_not(None))
    )
    if where is not None:
        stmt = stmt.where(where)
    cols = [column(m) for m in metrics]
    return _arrays(session, stmt, cols, [], Segment.image_id // BUCKET_IMAGES, np.float64)


def sample_clause(n_total: int, cap: int, *, seed: int = 0) -> Any:
    """``None`` when ``n_total <= cap``; else a seeded hash filter on ``segments.id`` that keeps about
    ``1.02 × cap`` of ``n_total`` rows (truncate to ``cap`` after fetching). Deterministic for a database."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if n_total <= cap:
        return None
    keep = math.ceil(_MOD * min(1.0, 1.02 * cap / n_total))
    big = cast(Segment.id, BigInteger) * literal(_MULT, BigInteger) + literal(seed * _SEED_MULT, BigInteger)
    return big % literal(_MOD, BigInteger) < keep


def forest_rows(
    session: Session, *, run_id: int, variant: str, cap: int, seed: int = 0, total: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The box-prompted segments of one run × variant with ``perturbations`` and ``consistency_std``, in image
    key then prompt order: all of them when there are at most ``cap``, else a seeded sample of at most ``cap``
    (:func:`sample_clause`). Returns ``(rows, how many there are in all)``; each row is
    ``{"prompt_kind", "perturbations", "consistency_std"}``, in image row (= key) then prompt order.
    ``total``: how many there are, when the caller knows (e.g. the summary's ``consistency_std_n`` of a
    box-prompted run), saving a count over the group."""

    usable = (
        *done_segments([run_id]),
        Segment.variant == variant,
        Segment.prompt_kind == "box",
        Segment.consistency_std.is_not(None),
        Segment.perturbations.is_not(None),
    )
    if total is None:
        total = int(
            session.scalar(
                select(func.count()).select_from(Segment).join(Image, Image.id == Segment.image_id).where(*usable)
            )
            or 0
        )
    stmt = (
        select(Segment.prompt_kind, Segment.perturbations, Segment.consistency_std)
        .join(Image, Image.id == Segment.image_id)
        .where(*usable)
        .order_by(Segment.image_id, Segment.prompt_index)
    )
    clause = sample_clause(total, cap, seed=seed)
    if clause is not None:
        stmt = stmt.where(clause)
    rows = []
    for kind, pert, std in session.execute(stmt.execution_options(yield_per=CHUNK)):
        rows.append({"prompt_kind": kind, "perturbations": pert, "consistency_std": std})
        if len(rows) >= cap:
            break
    return rows, total if clause is not None else len(rows)


def detection_stream(
    session: Session, *, run_id: int, variant: str
) -> Iterator[tuple[str, list[list[float]], list[list[float]], list[float]]]:
    """Per done image of the run, in key order: ``(key, ground-truth boxes, predicted boxes, their scores)`` for
    the RSNA metric, holding one image's boxes at a time (two key-ordered streams merged).

    Predictions are the component boxes (``mask_boxes``, components above the run's ``min_area``) of every segment
    of ``variant``, in segment order, each scored with its segment's predicted IoU (1.0 for models without one,
    e.g. GrabCut). Boxes are XYXY pixels.
    """
    key = _key_order(session, Image.key)
    preds = session.execute(
        select(Image.key, Segment.mask_boxes, Segment.score)
        .select_from(Image)
        .outerjoin(Segment, and_(Segment.image_id == Image.id, Segment.run_id == run_id, Segment.variant == variant))
        .where(Image.run_id == run_id, Image.status == ImageStatus.done.value)
        .order_by(key, Segment.id)
        .execution_options(yield_per=CHUNK)
    )
    truth = session.execute(
        select(Annotation.image_key, Annotation.x1, Annotation.y1, Annotation.x2, Annotation.y2)
        .where(Annotation.run_id == run_id, Annotation.kind == "box")
        .order_by(_key_order(session, Annotation.image_key), Annotation.index)
        .execution_options(yield_per=CHUNK)
    )
    pending = next(truth, None)
    current: str | None = None
    boxes: list[list[float]] = []
    scores: list[float] = []
    for image_key, mask_boxes, score in preds:
        if image_key != current:
            if current is not None:
                gt, pending = _truth_for(current, pending, truth)
                yield current, gt, boxes, scores
            current, boxes, scores = image_key, [], []
        for box in mask_boxes or []:
            boxes.append([float(v) for v in box])
            scores.append(1.0 if score is None else float(score))
    if current is not None:
        gt, pending = _truth_for(current, pending, truth)
        yield current, gt, boxes, scores


def _truth_for(key: str, pending: Any, rows: Iterator[Any]) -> tuple[list[list[float]], Any]:
    """Advance the key-ordered annotation stream to ``key``; its boxes and the first row past it."""
    while pending is not None and pending[0] < key:  # boxes of images that are not done
        pending = next(rows, None)
    gt = []
    while pending is not None and pending[0] == key:
        _, x1, y1, x2, y2 = pending
        gt.append([float(x1), float(y1), float(x2 or 0.0), float(y2 or 0.0)])
        pending = next(rows, None)
    return gt, pending


#: Images per window of :func:`detection_windows`: two small queries per window, arrays of a few MB.
DETECTION_WINDOW = 20_000

_PRED_SQL = """SELECT string_agg(float8send(s.image_id::float8) || float8send(s.id::float8) || float8send(b.ord::float8)
 || float8send((b.v->>0)::float8) || float8send((b.v->>1)::float8) || float8send((b.v->>2)::float8)
 || float8send((b.v->>3)::float8) || float8send(coalesce(s.score, 1.0)::float8), ''::bytea)
 FROM segments s CROSS JOIN LATERAL json_array_elements(s.mask_boxes::json) WITH ORDINALITY AS b(v, ord)
 WHERE s.image_id BETWEEN :lo AND :hi AND s.variant = :variant AND s.run_id = :run
 AND json_typeof(s.mask_boxes::json) = 'array'"""
_TRUTH_SQL = """SELECT string_agg(float8send(i.id::float8) || float8send(a.index::float8) || float8send(a.x1::float8)
 || float8send(a.y1::float8) || float8send(coalesce(a.x2, 0.0)::float8) || float8send(coalesce(a.y2, 0.0)::float8),
 ''::bytea)
 FROM images i JOIN annotations a ON a.run_id = i.run_id AND a.image_key = i.key
 WHERE i.run_id = :run AND i.status = 'done' AND i.id BETWEEN :lo AND :hi AND a.kind = 'box'"""


def _sorted_blob(data: bytes | None, width: int, keys: int) -> np.ndarray:
    """A ``string_agg`` of ``width`` float8s per row -> rows sorted by their first ``keys`` columns, keys dropped
    except the first (the image id)."""
    arr = np.frombuffer(data or b"", ">f8").reshape(-1, width).astype(np.float64)
    arr = arr[np.lexsort(arr[:, :keys].T[::-1])]
    return np.concatenate([arr[:, :1], arr[:, keys:]], axis=1)


def detection_windows(
    session: Session, *, run_id: int, variants: Sequence[str], window: int = DETECTION_WINDOW
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """PostgreSQL: :func:`detection_stream`'s boxes as flat float64 rows, a window of ``window`` image ids at a
    time: ``truth`` ``(M, 5)`` = image id, x1, y1, x2, y2, and per variant ``pred`` ``(N, 6)`` = image id, x1, y1,
    x2, y2, score, sorted by image (then box order; segment then component order). The JSON boxes are expanded in
    the database and come back as one byte string per window, so no Python object is made per box; predictions
    are read by the segments' (image, variant, prompt) index without a join, and those of images that are not done
    (none, unless a run was reset) are dropped here."""
    lo, hi = session.execute(
        select(func.min(Image.id), func.max(Image.id)).where(
            Image.run_id == run_id, Image.status == ImageStatus.done.value
        )
    ).one()
    if lo is None:
        return
    not_done = np.array(
        session.scalars(select(Image.id).where(Image.run_id == run_id, Image.status != ImageStatus.done.value)).all(),
        np.float64,
    )
    for start in range(int(lo), int(hi) + 1, window):
        yield window_arrays(session, run_id=run_id, variants=variants, lo=start, hi=start + window - 1,
                            not_done=not_done)  # fmt: skip


def window_arrays(
    session: Session, *, run_id: int, variants: Sequence[str], lo: int, hi: int, not_done: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PostgreSQL: one window of :func:`detection_windows`, the done images with ids in ``[lo, hi]``
    (``not_done``: the run's image ids that are not done, whose predictions are dropped)."""
    from sqlalchemy import text

    params = {"run": run_id, "lo": lo, "hi": hi}
    truth = _sorted_blob(session.scalar(text(_TRUTH_SQL), params), 6, 2)  # image, box index
    preds = {}
    for variant in variants:
        pred = _sorted_blob(session.scalar(text(_PRED_SQL), {**params, "variant": variant}), 8, 3)
        preds[variant] = pred[~np.isin(pred[:, 0], not_done)] if len(not_done) else pred
    return truth, preds
