"""Windows of a run's labelled images for the RSNA challenge metric, on PostgreSQL and SQLite alike.

:func:`labelled_windows` walks the run's done, labelled image ids a window at a time and hands back, per window,
the labelled ids and the flat float64 box rows of :func:`pixelperfect.db.streams.detection_windows` (truth
``(M, 5)`` = image id, x1, y1, x2, y2; per variant ``pred`` ``(N, 6)`` = image id, x1, y1, x2, y2, score, sorted by
image then box order). Only one window's arrays are held. On PostgreSQL the boxes come back as byte strings
(:func:`streams.window_arrays`); on SQLite the window's rows are read and flattened here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixelperfect.db import streams
from pixelperfect.db.models import Annotation, Image, ImageStatus, Segment
from pixelperfect.db.queries import is_postgresql

Window = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]


def labelled_windows(
    session: Session, *, run_id: int, variants: Sequence[str], window: int = streams.DETECTION_WINDOW
) -> Iterator[Window]:
    """Per window of ``window`` image ids: ``(labelled done image ids (K,) float64, truth, {variant: pred})``.
    Truth and predictions cover the window's done images (labelled or not: the caller keeps the labelled ones)."""
    done = (Image.run_id == run_id, Image.status == ImageStatus.done.value)
    lo, hi = session.execute(
        select(func.min(Image.id), func.max(Image.id)).where(*done, Image.labelled.is_(True))
    ).one()
    if lo is None:
        return
    pg = is_postgresql(session)
    not_done = np.zeros(0, np.float64)
    if pg:
        not_done = np.array(
            session.scalars(
                select(Image.id).where(Image.run_id == run_id, Image.status != ImageStatus.done.value)
            ).all(),
            np.float64,
        )
    for start in range(int(lo), int(hi) + 1, window):
        stop = start + window - 1
        labelled = np.array(
            session.scalars(
                select(Image.id)
                .where(*done, Image.labelled.is_(True), Image.id.between(start, stop))
                .order_by(Image.id)
            ).all(),
            np.float64,
        )
        if not len(labelled):
            continue
        if pg:
            truth, preds = streams.window_arrays(
                session, run_id=run_id, variants=variants, lo=start, hi=stop, not_done=not_done
            )
        else:
            truth, preds = _rows_window(session, run_id, variants, start, stop)
        yield labelled, truth, preds


def _rows_window(
    session: Session, run_id: int, variants: Sequence[str], lo: int, hi: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """SQLite: one window's truth and prediction rows, read row by row (the JSON boxes parsed by the driver)."""
    in_window = (Image.run_id == run_id, Image.status == ImageStatus.done.value, Image.id.between(lo, hi))
    truth_rows = session.execute(
        select(Image.id, Annotation.x1, Annotation.y1, Annotation.x2, Annotation.y2)
        .select_from(Image)
        .join(Annotation, (Annotation.run_id == Image.run_id) & (Annotation.image_key == Image.key))
        .where(*in_window, Annotation.kind == "box")
        .order_by(Image.id, Annotation.index)
    ).all()
    truth = np.array([(i, x1, y1, x2 or 0.0, y2 or 0.0) for i, x1, y1, x2, y2 in truth_rows], np.float64).reshape(-1, 5)
    preds = {}
    for variant in variants:
        rows: list[tuple[float, ...]] = []
        for image_id, boxes, score in session.execute(
            select(Segment.image_id, Segment.mask_boxes, Segment.score)
            .join(Image, Image.id == Segment.image_id)
            .where(*in_window, Segment.run_id == run_id, Segment.variant == variant)
            .order_by(Segment.image_id, Segment.id)
        ):
            s = 1.0 if score is None else float(score)
            rows.extend((image_id, *(float(v) for v in box), s) for box in boxes or [])
        preds[variant] = np.array(rows, np.float64).reshape(-1, 6)
    return truth, preds
