"""Aggregate evaluation queries (SQLAlchemy Core, identical on PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixelperfect.db.models import Image, ImageStatus, Run, Segment


def variant_summary(session: Session, *, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per run × variant: images done, segments and the means of score, stability, consistency and Dice."""
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
        )
        .join(Run, Run.id == Segment.run_id)
        .join(Image, Image.id == Segment.image_id)
        .where(Segment.run_id.in_(list(run_ids)), Image.status == ImageStatus.done.value)
        .group_by(Run.name, Run.model, Segment.variant)
        .order_by(Run.name, Segment.variant)
    )
    return [dict(row._mapping) for row in session.execute(stmt)]
