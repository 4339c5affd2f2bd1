"""Aggregate evaluation queries (SQLAlchemy 2, the same numbers on PostgreSQL and SQLite).

Everything here is a ``GROUP BY``: Python receives rows proportional to runs × variants (× bins), never to
segments. Percentiles (median, p10, p90, and the quartiles the box plots draw) are linear interpolations between
the closest ranks — PostgreSQL's ``percentile_cont`` does it in the database; SQLite has no percentile aggregate,
so there each group's column is streamed on its own into one float64 array and numpy interpolates the same way.
Only segments of images that finished (``status = 'done'``) count. Row streams (paired values, detection input,
samples) are in :mod:`pixelperfect.db.streams`.

Every query filters both ``segments.run_id`` and ``images.run_id``, so the planner reaches both tables through
their run indexes and never scans other runs' rows (``tests/db/test_queries_plans.py`` reads the plans).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Float, and_, case, func, literal, select
from sqlalchemy.orm import Session

from pixelperfect.db.models import Image, ImageStatus, Run, Segment

#: GrabCut's second candidate: the box itself, returned when the cut collapsed (``GrabCutSegmenter.BOX``).
GRABCUT_BOX = 1
#: The headline measures of the summary tables (segments columns).
METRICS: tuple[str, ...] = ("score", "stability", "consistency_std", "consistency_iou", "dice", "iou")
#: Further per-segment measures that may be compared or ranked.
EXTRA_METRICS: tuple[str, ...] = ("consistency_iou_base", "nsd", "hd95", "box_iou", "inside_box", "box_dice")
#: Measures where a smaller value is the better one.
LOWER_IS_BETTER = frozenset({"consistency_std", "hd95"})
#: Percentiles of the statistics table (``<metric>_<name>``), in percent.
PERCENTILES = {"median": 50, "p10": 10, "p90": 90}
#: Further percentiles the box plots draw (boxes: quartiles; whiskers: p10 and p90).
BOX_PERCENTILES = {"p25": 25, "p75": 75}
_ALL_PERCENTILES = {**PERCENTILES, **BOX_PERCENTILES}


def _box_fallbacks() -> Any:
    """Per group: GrabCut segments that are their box (a collapsed cut); 0 for other models' groups."""
    return func.count(case((and_(Run.model == "grabcut", Segment.chosen == GRABCUT_BOX), 1)))


def column(metric: str) -> Any:
    """The :class:`Segment` column of ``metric``; ``ValueError`` naming an unknown one."""
    if metric not in METRICS + EXTRA_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS + EXTRA_METRICS)}")
    return getattr(Segment, metric)


def done_segments(run_ids: Sequence[int]) -> tuple[Any, ...]:
    """WHERE clauses for segments of done images of ``run_ids`` (the query joins :class:`Image` on its id)."""
    ids = list(run_ids)
    return Segment.run_id.in_(ids), Image.run_id.in_(ids), Image.status == ImageStatus.done.value


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def run_ids_by_name(session: Session, *, names: Sequence[str]) -> dict[str, int]:
    """``{run name: id}`` in the order given; ``LookupError`` naming any run that does not exist."""
    found = {name: rid for name, rid in session.execute(select(Run.name, Run.id).where(Run.name.in_(list(names))))}
    missing = [n for n in names if n not in found]
    if missing:
        raise LookupError(f"no run named {', '.join(map(repr, missing))}")
    return {n: found[n] for n in names}


def variant_summary(session: Session, *, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per run × variant: images done, segments, the means of score, stability, consistency, Dice and the prompt
    box's own Dice (``box_dice_mean``), and ``box_fallbacks`` (GrabCut segments that are their box; ``None`` for
    other models)."""
    means = ("score", "stability", "consistency_std", "consistency_iou", "dice", "iou", "box_dice")
    stmt = (
        select(
            Run.name,
            Run.model,
            Segment.variant,
            func.count(func.distinct(Segment.image_id)).label("images"),
            func.count(Segment.id).label("segments"),
            *(func.avg(getattr(Segment, m)).label(f"{m}_mean") for m in means),
            _box_fallbacks().label("box_fallbacks"),
        )
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments(run_ids))
        .group_by(Run.name, Run.model, Segment.variant)
        .order_by(Run.name, Segment.variant)
    )
    rows = [dict(row._mapping) for row in session.execute(stmt)]
    for row in rows:
        row["box_fallbacks"] = row["box_fallbacks"] if row["model"] == "grabcut" else None
    return rows


def metric_summary(
    session: Session, *, run_ids: Sequence[int], metrics: Sequence[str] = METRICS
) -> list[dict[str, Any]]:
    """Per run × model × variant: ``run_id``, ``n`` segments and, per metric ``m``: ``m_n`` (non-null values),
    ``m_mean``, ``m_median``, ``m_p10``, ``m_p90`` and the quartiles ``m_p25``, ``m_p75`` (``None`` where the metric
    never applies, e.g. Dice without ground truth or GrabCut's score), and ``box_fallbacks`` (GrabCut segments that
    are their box because the cut collapsed; ``None`` for other models). Ordered by run id, then variant.
    """
    cols = [column(m) for m in metrics]
    group = (Segment.run_id, Run.name, Run.model, Segment.variant)
    pg = is_postgresql(session)
    fractions = [q / 100 for q in _ALL_PERCENTILES.values()]
    if pg:
        from sqlalchemy.dialects.postgresql import ARRAY, array

        quantiles = [
            func.percentile_cont(array(fractions)).within_group(c).cast(ARRAY(Float)) for c in cols
        ]  # one sort per column gives all its percentiles
    else:
        quantiles = []
    stmt = (
        select(
            *group,
            func.count(Segment.id),
            *(func.count(c) for c in cols),
            *(func.avg(c) for c in cols),
            _box_fallbacks(),
            *quantiles,
        )
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments(run_ids))
        .group_by(*group)
        .order_by(Segment.run_id, Segment.variant)
    )
    out = []
    k = len(metrics)
    for row in session.execute(stmt):
        run_id, name, model, variant, n = row[:5]
        entry: dict[str, Any] = {"run": name, "model": model, "variant": variant, "n": int(n), "run_id": run_id}
        entry["box_fallbacks"] = int(row[5 + 2 * k]) if model == "grabcut" else None
        for i, m in enumerate(metrics):
            entry[f"{m}_n"] = int(row[5 + i])
            mean = row[5 + k + i]
            entry[f"{m}_mean"] = float(mean) if mean is not None else None
            values: Any = (
                row[6 + 2 * k + i] if pg else _sqlite_percentiles(session, run_id, variant, m, entry[f"{m}_n"])
            )
            for j, p in enumerate(_ALL_PERCENTILES):
                entry[f"{m}_{p}"] = float(values[j]) if values is not None and values[j] is not None else None
        out.append(entry)
    return out


def _sqlite_percentiles(session: Session, run_id: int, variant: str, metric: str, n: int) -> list[float] | None:
    """One group's column streamed into a float64 array of ``n`` values -> numpy's linear percentiles."""
    if n == 0:
        return None
    col = column(metric)
    stmt = (
        select(col)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments([run_id]), Segment.variant == variant, col.is_not(None))
    )
    values = np.fromiter(session.scalars(stmt.execution_options(yield_per=50_000)), np.float64, count=n)
    return [float(v) for v in np.percentile(values, list(_ALL_PERCENTILES.values()))]


def failure_summary(session: Session, *, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Failed images per run and reason: ``[{"run", "reason", "n"}]``, most frequent first."""
    stmt = (
        select(Run.name, Image.error_reason, func.count(Image.id))
        .join(Run, Run.id == Image.run_id)
        .where(Image.run_id.in_(list(run_ids)), Image.status == ImageStatus.failed.value)
        .group_by(Run.name, Image.error_reason)
        .order_by(Run.name, func.count(Image.id).desc(), Image.error_reason)
    )
    return [{"run": r, "reason": reason or "unknown", "n": int(n)} for r, reason, n in session.execute(stmt)]


def reliability_bins(
    session: Session, *, run_id: int, variant: str, n_bins: int = 10, target: str = "dice"
) -> list[dict[str, Any]]:
    """Equal-width predicted-IoU bins on [0, 1] of one run × variant: ``[{"lo", "hi", "n", "score_mean",
    "dice_mean"}]`` over segments with both a score and a ``target``, ``n_bins`` entries (empty bins have ``n`` 0
    and ``None`` means). Bin ``b`` holds ``lo <= score < hi``; scores outside [0, 1] fall into the end bins (the
    bin edges are numpy's ``linspace``, compared exactly as :func:`numpy.digitize` does)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    truth = column(target)
    whens = [(Segment.score < float(e), i) for i, e in enumerate(edges[1:-1])]
    index = case(*whens, else_=n_bins - 1) if whens else literal(0)
    stmt = (
        select(index.label("bin"), func.count(), func.avg(Segment.score), func.avg(truth))
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments([run_id]), Segment.variant == variant, Segment.score.is_not(None), truth.is_not(None))
        .group_by("bin")
    )
    found = {int(b): (int(n), s, d) for b, n, s, d in session.execute(stmt)}
    out = []
    for b in range(n_bins):
        n, s, d = found.get(b, (0, None, None))
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": n,
                "score_mean": float(s) if n else None,
                f"{target}_mean": float(d) if n else None,
            }
        )
    return out


def ranked_cases(
    session: Session, *, run_ids: Sequence[int], metric: str = "dice", n: int = 10, worst: bool = True
) -> list[dict[str, Any]]:
    """The ``n`` worst (or best) segments by ``metric`` across the runs, with their keys and what a gallery needs
    (``ORDER BY … LIMIT n`` in the database).

    "Worst" is the lowest value, or the highest for :data:`LOWER_IS_BETTER` measures; null values never rank.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    col = column(metric)
    ascending = worst != (metric in LOWER_IS_BETTER)
    stmt = (
        select(
            Run.name.label("run"),
            Run.model,
            Run.source_url,
            Segment.variant,
            Image.key,
            Image.gt_mask_key,
            Segment.prompt_index,
            Segment.prompt_kind,
            Segment.prompt,
            Segment.score,
            Segment.dice,
            Segment.consistency_std,
            Segment.mask_key,
            col.label("value"),
        )
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(*done_segments(run_ids), col.is_not(None))
        .order_by(col.asc() if ascending else col.desc(), Image.key, Segment.variant, Segment.prompt_index)
        .limit(n)
    )
    return [dict(row._mapping) for row in session.execute(stmt)]


def run_progress(session: Session, *, run_id: int) -> dict[str, Any]:
    """What ``status`` shows, in two indexed queries over the run's images (none over its segments):
    ``images`` (``{"queued", "done", "failed"}`` counts, ``cancelled`` too when the run has any), ``segments``
    (the done images' ``n_segments`` summed), ``failures`` (``{reason: images}``), ``first``/``last``
    (``finished_at`` range, UTC) and ``finished`` (images with a ``finished_at``)."""
    counts = {s.value: 0 for s in ImageStatus if s is not ImageStatus.cancelled}  # cancelled: when there are any
    segments, finished = 0, 0
    first: datetime | None = None
    last: datetime | None = None
    stmt = (
        select(
            Image.status,
            func.count(),
            func.sum(Image.n_segments),
            func.min(Image.finished_at),
            func.max(Image.finished_at),
            func.count(Image.finished_at),
        )
        .where(Image.run_id == run_id)
        .group_by(Image.status)
    )
    for status, n, segs, lo, hi, fin in session.execute(stmt):
        counts[status] = int(n)
        segments += int(segs or 0) if status == ImageStatus.done.value else 0
        finished += int(fin)
        first = lo if first is None or (lo is not None and lo < first) else first
        last = hi if last is None or (hi is not None and hi > last) else last
    failures = {
        str(reason): int(n)
        for reason, n in session.execute(
            select(Image.error_reason, func.count())
            .where(Image.run_id == run_id, Image.status == ImageStatus.failed.value)
            .group_by(Image.error_reason)
        )
    }
    return {"images": counts, "segments": segments, "failures": failures, "first": first, "last": last,
            "finished": finished}  # fmt: skip
