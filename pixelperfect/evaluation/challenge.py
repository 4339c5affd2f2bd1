"""The RSNA Pneumonia Detection Challenge metric as the challenge scored it, over a run's labelled images.

Only a run with automatic prompts (``prompt_mode = "auto"``: no ground-truth box reached the model) is a
detection result. Its score counts every done image that has a label — labelled negatives (RSNA ``Target = 0``
rows: ``images.labelled`` true, no box) included: such an image scores 0 if anything is predicted on it and is
skipped if nothing is, exactly as in the challenge. Images nobody labelled (``labelled`` NULL) do not count.

A box-prompted run was prompted by the very boxes it would be scored against, so the same computation there only
measures how well the boxes drawn around its masks agree with their prompts: :func:`box_agreement`, under that
name, never as mAP.

Predictions are each segment's component boxes (``mask_boxes``: components above the run's ``min_area``), each
scored with its segment's predicted IoU (1.0 for a model without one). Memory: the labelled images' truth boxes;
segments stream in image order. This per-image form is the reference: the report computes the same numbers a
window of images at a time (:func:`pixelperfect.db.windows.labelled_windows` into
:func:`pixelperfect.evaluation.detection.challenge_windows`; ``tests/evaluation/test_challenge.py`` checks they agree).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TypedDict

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from pixelperfect.db.models import Annotation, Image, ImageStatus, Segment
from pixelperfect.pipeline.options import PromptKind
from pixelperfect.pipeline.score.metrics import rsna_image_precision

#: Rows fetched per round trip while streaming segments.
STREAM_ROWS = 5000

DetectionInput = tuple[str, list[list[float]], list[list[float]], list[float]]


def detection_inputs(
    session: Session, *, run_id: int, variant: str, labelled_only: bool = True
) -> Iterator[DetectionInput]:
    """Per done image of the run (only labelled ones unless ``labelled_only`` is false), in image-id order:
    ``(key, truth boxes XYXY, predicted boxes XYXY, their scores)``."""
    where = [Image.run_id == run_id, Image.status == ImageStatus.done.value]
    if labelled_only:
        where.append(Image.labelled.is_(True))
    truth: dict[str, list[list[float]]] = defaultdict(list)
    for key, x1, y1, x2, y2 in session.execute(
        select(Annotation.image_key, Annotation.x1, Annotation.y1, Annotation.x2, Annotation.y2)
        .where(Annotation.run_id == run_id, Annotation.kind == PromptKind.box.value)
        .order_by(Annotation.image_key, Annotation.index)
    ):
        truth[key].append([float(x1), float(y1), float(x2 or 0.0), float(y2 or 0.0)])
    segments = session.execute(
        select(Segment.image_id, Segment.mask_boxes, Segment.score)
        .join(Image, Image.id == Segment.image_id)
        .where(Segment.run_id == run_id, Segment.variant == variant, *where)
        .order_by(Segment.image_id)
        .execution_options(yield_per=STREAM_ROWS)
    )
    pending = next(segments, None)
    for image_id, key in session.execute(select(Image.id, Image.key).where(*where).order_by(Image.id)).all():
        boxes: list[list[float]] = []
        scores: list[float] = []
        while pending is not None and pending[0] <= image_id:
            if pending[0] == image_id:
                for box in pending[1] or []:
                    boxes.append([float(v) for v in box])
                    scores.append(1.0 if pending[2] is None else float(pending[2]))
            pending = next(segments, None)
        yield key, truth.get(key, []), boxes, scores


class ChallengeScore(TypedDict):
    """The RSNA challenge metric of one run × variant (:func:`rsna_challenge`)."""

    score: float | None
    images: int
    labelled: int
    negatives: int
    negatives_predicted: int
    skipped: int
    score_positives: float | None
    positives: int


class BoxAgreement(TypedDict):
    """A box-prompted run's agreement with its own prompt boxes (:func:`box_agreement`)."""

    box_agreement: float | None
    images: int


def rsna_challenge(session: Session, *, run_id: int, variant: str) -> ChallengeScore:
    """The challenge score of one run × variant over its labelled done images.

    Returns ``score`` (mean per-image score over the images that count, ``None`` when none does), ``images``
    (counted), ``labelled`` (labelled done images), ``negatives`` (labelled with no box), ``negatives_predicted``
    (of those, the ones with a prediction: each counted as 0), ``skipped`` (no truth, no prediction) and
    ``score_positives`` / ``positives`` (the same over labelled images with a box only: the score without
    negatives, for comparison).
    """
    values: list[float] = []
    positives: list[float] = []
    labelled = negatives = negatives_predicted = 0
    for _, truth, boxes, scores in detection_inputs(session, run_id=run_id, variant=variant):
        labelled += 1
        if not truth:
            negatives += 1
            negatives_predicted += bool(boxes)
        value = rsna_image_precision(truth, boxes, scores)
        if value is None:
            continue
        values.append(value)
        if truth:
            positives.append(value)
    return {
        "score": float(np.mean(values)) if values else None,
        "images": len(values),
        "labelled": labelled,
        "negatives": negatives,
        "negatives_predicted": negatives_predicted,
        "skipped": labelled - len(values),
        "score_positives": float(np.mean(positives)) if positives else None,
        "positives": len(positives),
    }


def box_agreement(session: Session, *, run_id: int, variant: str) -> BoxAgreement:
    """A box-prompted run's agreement between the boxes drawn around its masks and the ground-truth boxes that
    prompted them, by the challenge's formula over its annotated done images (labelled or not: every prompt
    came from a box). Circular by construction — a check of the box-from-mask step, not a detection score."""
    values = [
        v
        for _, truth, boxes, scores in detection_inputs(session, run_id=run_id, variant=variant, labelled_only=False)
        if truth and (v := rsna_image_precision(truth, boxes, scores)) is not None
    ]
    return {"box_agreement": float(np.mean(values)) if values else None, "images": len(values)}
