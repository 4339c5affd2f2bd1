"""Aggregate evaluation queries (SQLAlchemy 2, identical on PostgreSQL and SQLite).

Counts and means are computed in SQL (``GROUP BY``). Percentiles (median, p10, p90) are computed in Python with
numpy's linear interpolation over the fetched, non-null metric columns: PostgreSQL has ``percentile_cont`` but
SQLite has no percentile aggregate, and one code path for both keeps the numbers identical on either database.
Only segments of images that finished (``status = 'done'``) count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session, aliased

from pixelperfect.db.models import Annotation, Image, ImageStatus, Run, Segment

#: GrabCut's second candidate: the box itself, returned when the cut collapsed (``GrabCutSegmenter.BOX``).
GRABCUT_BOX = 1


def _box_fallbacks() -> Any:
    """Per group: GrabCut segments that are their box (a collapsed cut); 0 for other models' groups."""
    return func.count(case((and_(Run.model == "grabcut", Segment.chosen == GRABCUT_BOX), 1)))


#: The headline measures of the summary tables (segments columns).
METRICS: tuple[str, ...] = ("score", "stability", "consistency_std", "consistency_iou", "dice", "iou")
#: Further per-segment measures that may be compared or ranked.
EXTRA_METRICS: tuple[str, ...] = ("consistency_iou_base", "nsd", "hd95", "box_iou", "inside_box", "box_dice")
#: Measures where a smaller value is the better one.
LOWER_IS_BETTER = frozenset({"consistency_std", "hd95"})
PERCENTILES = {"median": 50, "p10": 10, "p90": 90}


def _column(metric: str) -> Any:
    if metric not in METRICS + EXTRA_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS + EXTRA_METRICS)}")
    return getattr(Segment, metric)


def _done_segments(run_ids: Sequence[int]) -> Any:
    return Segment.run_id.in_(list(run_ids)), Image.status == ImageStatus.done.value


def variant_summary(session: Session, *, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per run × variant: images done, segments, the means of score, stability, consistency, Dice and the prompt
    box's own Dice (``box_dice_mean``), and ``box_fallbacks`` (GrabCut segments that are their box; ``None`` for
    other models)."""
    stmt = (
        select(
            Run.name,
            Run.model,
            Segment.variant,
            func.count(func.distinct(Segment.image_id)).label("images"),
            func.count(Segment.id).label("segments"),
            func.avg(Segment.score).label("score_mean"),
            func.avg(Segment.stability).label("stability_mean"),
            func.avg(Segment.consistency_std).label("consistency_std_mean"),
            func.avg(Segment.consistency_iou).label("consistency_iou_mean"),
            func.avg(Segment.dice).label("dice_mean"),
            func.avg(Segment.iou).label("iou_mean"),
            func.avg(Segment.box_dice).label("box_dice_mean"),
            _box_fallbacks().label("box_fallbacks"),
        )
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(Segment.run_id.in_(list(run_ids)), Image.status == ImageStatus.done.value)
        .group_by(Run.name, Run.model, Segment.variant)
        .order_by(Run.name, Segment.variant)
    )
    rows = [dict(row._mapping) for row in session.execute(stmt)]
    for row in rows:
        row["box_fallbacks"] = row["box_fallbacks"] if row["model"] == "grabcut" else None
    return rows


def run_ids_by_name(session: Session, *, names: Sequence[str]) -> dict[str, int]:
    """``{run name: id}`` in the order given; ``LookupError`` naming any run that does not exist."""
    found = {name: rid for name, rid in session.execute(select(Run.name, Run.id).where(Run.name.in_(list(names))))}
    missing = [n for n in names if n not in found]
    if missing:
        raise LookupError(f"no run named {', '.join(map(repr, missing))}")
    return {n: found[n] for n in names}


def metric_summary(
    session: Session, *, run_ids: Sequence[int], metrics: Sequence[str] = METRICS
) -> list[dict[str, Any]]:
    """Per run × model × variant: ``n`` segments and, per metric ``m``: ``m_n`` (non-null values), ``m_mean``,
    ``m_median``, ``m_p10``, ``m_p90`` (``None`` where the metric never applies, e.g. Dice without ground truth
    or GrabCut's score), and ``box_fallbacks`` (GrabCut segments that are their box because the cut collapsed;
    ``None`` for other models). Ordered by run id, then variant.
    """
    cols = [_column(m) for m in metrics]
    where = _done_segments(run_ids)
    group = (Segment.run_id, Run.name, Run.model, Segment.variant)
    stmt = (
        select(
            *group,
            func.count(Segment.id),
            *(func.count(c) for c in cols),
            *(func.avg(c) for c in cols),
            _box_fallbacks(),
        )
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(*where)
        .group_by(*group)
        .order_by(Segment.run_id, Segment.variant)
    )
    out: dict[tuple[int, str], dict[str, Any]] = {}
    k = len(metrics)
    for row in session.execute(stmt):
        run_id, name, model, variant, n = row[:5]
        entry: dict[str, Any] = {"run": name, "model": model, "variant": variant, "n": int(n)}
        entry["box_fallbacks"] = int(row[-1]) if model == "grabcut" else None
        for i, m in enumerate(metrics):
            entry[f"{m}_n"] = int(row[5 + i])
            mean = row[5 + k + i]
            entry[f"{m}_mean"] = float(mean) if mean is not None else None
        out[(run_id, variant)] = entry
    values: dict[tuple[int, str], list[list[float]]] = defaultdict(lambda: [[] for _ in metrics])
    fetch = select(Segment.run_id, Segment.variant, *cols).join(Image, Image.id == Segment.image_id).where(*where)
    for row in session.execute(fetch.execution_options(yield_per=10_000)):
        lists = values[(row[0], row[1])]
        for i, v in enumerate(row[2:]):
            if v is not None:
                lists[i].append(v)
    for key, entry in out.items():
        for i, m in enumerate(metrics):
            arr = np.asarray(values[key][i], np.float64)
            for name, q in PERCENTILES.items():
                entry[f"{m}_{name}"] = float(np.percentile(arr, q)) if arr.size else None
    return list(out.values())


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


def paired_values(
    session: Session, *, a: tuple[int, str], b: tuple[int, str], metric: str
) -> list[tuple[str, int, float, float]]:
    """``(image key, prompt index, value in a, value in b)`` for every prompt segmented in both ``a`` and ``b``
    (each a ``(run id, variant)``), matched on image key and prompt index, both values non-null.

    Automatic-mode segments are excluded: their prompt index ranks masks, it does not name the same prompt.
    """
    _column(metric)  # validates the name
    sa, sb = aliased(Segment), aliased(Segment)
    ia, ib = aliased(Image), aliased(Image)
    col_a, col_b = getattr(sa, metric), getattr(sb, metric)
    stmt = (
        select(ia.key, sa.prompt_index, col_a, col_b)
        .join(ia, ia.id == sa.image_id)
        .join(ib, and_(ib.key == ia.key, ib.run_id == b[0]))
        .join(sb, and_(sb.image_id == ib.id, sb.prompt_index == sa.prompt_index, sb.variant == b[1]))
        .where(
            sa.run_id == a[0],
            sa.variant == a[1],
            sa.prompt_kind != "auto",
            sb.prompt_kind != "auto",
            ia.status == ImageStatus.done.value,
            ib.status == ImageStatus.done.value,
            col_a.is_not(None),
            col_b.is_not(None),
        )
        .order_by(ia.key, sa.prompt_index)
    )
    return [(k, int(p), float(x), float(y)) for k, p, x, y in session.execute(stmt)]


def ranked_cases(
    session: Session, *, run_ids: Sequence[int], metric: str = "dice", n: int = 10, worst: bool = True
) -> list[dict[str, Any]]:
    """The ``n`` worst (or best) segments by ``metric`` across the runs, with their keys and what a gallery needs.

    "Worst" is the lowest value, or the highest for :data:`LOWER_IS_BETTER` measures; null values never rank.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    col = _column(metric)
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
        .where(*_done_segments(run_ids), col.is_not(None))
        .order_by(col.asc() if ascending else col.desc(), Image.key, Segment.variant, Segment.prompt_index)
        .limit(n)
    )
    return [dict(row._mapping) for row in session.execute(stmt)]


def segment_rows(session: Session, *, run_ids: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per segment of the runs: ``run``, ``model``, ``variant``, ``key``, ``prompt_index``,
    ``prompt_kind`` and the requested segment ``columns`` (any attribute of :class:`Segment`)."""
    extra = [getattr(Segment, c) for c in columns]
    stmt = (
        select(
            Run.name.label("run"),
            Run.model,
            Segment.variant,
            Image.key,
            Segment.prompt_index,
            Segment.prompt_kind,
            *extra,
        )
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(*_done_segments(run_ids))
        .order_by(Segment.run_id, Segment.variant, Image.key, Segment.prompt_index)
    )
    return [dict(row._mapping) for row in session.execute(stmt)]


def detection_inputs(
    session: Session, *, run_id: int, variant: str
) -> list[tuple[str, list[list[float]], list[list[float]], list[float]]]:
    """Per done image of the run: ``(key, ground-truth boxes, predicted boxes, their scores)`` for the RSNA metric.

    Predictions are the component boxes (``mask_boxes``, components above the run's ``min_area``) of every segment
    of ``variant``, each scored with its segment's predicted IoU (1.0 for models without one, e.g. GrabCut).
    """
    images = {
        key: image_id
        for image_id, key in session.execute(
            select(Image.id, Image.key).where(Image.run_id == run_id, Image.status == ImageStatus.done.value)
        )
    }
    truth: dict[str, list[list[float]]] = defaultdict(list)
    for key, x1, y1, x2, y2 in session.execute(
        select(Annotation.image_key, Annotation.x1, Annotation.y1, Annotation.x2, Annotation.y2)
        .where(Annotation.run_id == run_id, Annotation.kind == "box")
        .order_by(Annotation.image_key, Annotation.index)
    ):
        truth[key].append([float(x1), float(y1), float(x2 or 0.0), float(y2 or 0.0)])
    preds: dict[int, tuple[list[list[float]], list[float]]] = defaultdict(lambda: ([], []))
    for image_id, boxes, score in session.execute(
        select(Segment.image_id, Segment.mask_boxes, Segment.score).where(
            Segment.run_id == run_id, Segment.variant == variant
        )
    ):
        for box in boxes or []:
            preds[image_id][0].append([float(v) for v in box])
            preds[image_id][1].append(1.0 if score is None else float(score))
    return [(key, truth.get(key, []), *preds[image_id]) for key, image_id in sorted(images.items())]
