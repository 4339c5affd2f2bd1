"""The score stage: one row builder for every prompt mode. A :class:`~pixelperfect.pipeline.model.protocol.Prediction`
(box, point or automatic prompts and their jittered copies) -> one :class:`SegmentRecord` per prompt: the model's
scores, the mask's component boxes, consistency under jitter and accuracy against the ground truth.

Runs on the worker's post threads, never on the model thread (tests/worker/test_flow_threads.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

from pixelperfect.pipeline.model.protocol import Prediction
from pixelperfect.pipeline.options import ProcessSettings, PromptKind
from pixelperfect.pipeline.records import ImageInput, SegmentRecord, Spacing
from pixelperfect.pipeline.score.metrics import surface_scores
from pixelperfect.pipeline.score.overlap import (
    box_dice,
    box_iou,
    boxes_from_mask,
    consistency,
    dice,
    fraction_inside,
    iou,
    mask_bbox,
    restrict_to_box,
)


def score_prediction(
    image: ImageInput, variant: str, prediction: Prediction, settings: ProcessSettings
) -> list[SegmentRecord]:
    """The records of the ``n`` prompts of ``prediction`` (prompt order), without mask PNGs.

    A box prompt is scored against the ground truth inside its box (:func:`prompt_accuracy`); a point or automatic
    prompt against the whole ground truth (:func:`full_image_accuracy`).
    """
    out = prediction.output
    n = prediction.n_prompts
    counts = prediction.perturbed_counts
    if counts is None:
        counts = np.full(n, settings.jitter.k, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if len(counts) != n or len(out.chosen) != n + int(starts[-1]):
        raise ValueError(
            f"prediction has {len(out.chosen)} masks for {n} prompts with {int(starts[-1])} perturbed copies: "
            f"expected {n + int(starts[-1])}"
        )
    best = out.best_scores
    records = []
    for p in range(n):
        mask, prompt = out.masks[p], prediction.prompts[p]
        jit = slice(n + int(starts[p]), n + int(starts[p + 1]))
        if prediction.kind == PromptKind.box:
            accuracy = prompt_accuracy(mask, prompt, image.gt_mask, settings, image.spacing)
        else:
            accuracy = full_image_accuracy(mask, image.boxes, image.gt_mask, settings, image.spacing)
        jittered = prediction.perturbed[int(starts[p]) : int(starts[p + 1])]
        stable = consistency(mask, out.masks[jit], best[jit])
        records.append(
            SegmentRecord(
                variant=variant,
                prompt_index=p,
                prompt_kind=prediction.kind.value,
                prompt=_prompt_json(prediction, p),
                score=_finite(best[p]),
                scores=[_finite(v) for v in out.scores[p]],
                chosen=int(out.chosen[p]),
                stability=_finite(out.stability[p]),
                area=int(np.count_nonzero(mask)),
                mask_boxes=boxes_from_mask(mask, settings.min_area),
                perturbations=[[*map(float, q), _finite(s)] for q, s in zip(jittered, best[jit], strict=True)],
                consistency_std=stable["consistency_std"],
                consistency_iou=stable["consistency_iou"],
                consistency_iou_base=stable["consistency_iou_base"],
                box_iou=accuracy["box_iou"],
                inside_box=accuracy["inside_box"],
                dice=accuracy["dice"],
                iou=accuracy["iou"],
                nsd=accuracy["nsd"],
                hd95=accuracy["hd95"],
                box_dice=accuracy["box_dice"],
                surface_unit=accuracy["surface_unit"],
            )
        )
    return records


def _prompt_json(prediction: Prediction, p: int) -> list[float] | dict[str, Any]:
    """The ``prompt`` column: the XYXY box or XY point, or for a concept instance ``{"concept": phrase, "box":
    the model's XYXY box}`` (the phrase lives in the JSON: no migration)."""
    values = [float(v) for v in prediction.prompts[p]]
    if prediction.kind == PromptKind.concept:
        return {"concept": (prediction.labels or [""] * prediction.n_prompts)[p], "box": values}
    return values


class Accuracy(TypedDict):
    """A segment's accuracy columns; ``None`` where they do not apply or there is no ground truth. ``nsd`` and
    ``hd95`` are in ``surface_unit`` (``"mm"`` where the image's pixel spacing is known, else ``"px"``)."""

    box_iou: float | None
    inside_box: float | None
    dice: float | None
    iou: float | None
    nsd: float | None
    hd95: float | None
    box_dice: float | None
    surface_unit: str | None


def prompt_accuracy(
    mask: np.ndarray, box: np.ndarray, gt_mask: np.ndarray | None, settings: ProcessSettings, spacing: Spacing = None
) -> Accuracy:
    """Accuracy of a segment prompted by the XYXY ``box``: its tight box's IoU with the prompt, the fraction of it
    inside the prompt, and overlap with the ground truth inside the prompt box (``None`` without ground truth).
    NSD and HD95 in mm where ``spacing`` (row, col mm) is known, else px (see
    :mod:`pixelperfect.pipeline.decode.spacing`).
    """
    bbox = mask_bbox(mask)
    scores = Accuracy(
        box_iou=box_iou(bbox, box) if bbox else 0.0,
        inside_box=fraction_inside(mask, box),
        dice=None,
        iou=None,
        nsd=None,
        hd95=None,
        box_dice=None,
        surface_unit=None,
    )
    if gt_mask is not None:
        truth = restrict_to_box(gt_mask, box)
        scores["dice"], scores["iou"] = dice(mask, truth), iou(mask, truth)
        scores["box_dice"] = box_dice(box, truth)
        _add_surface(scores, mask, truth, settings, spacing)
    return scores


def full_image_accuracy(
    mask: np.ndarray,
    truth_boxes: Sequence[Sequence[float]],
    gt_mask: np.ndarray | None,
    settings: ProcessSettings,
    spacing: Spacing = None,
) -> Accuracy:
    """Accuracy of a segment that was not prompted by a ground-truth box: overlap with the whole ground-truth
    mask, and ``box_iou`` = the best IoU of the mask's tight box with any ground-truth box (``None`` without
    boxes; 0.0 for an empty mask). ``inside_box`` and ``box_dice`` do not apply (``None``). NSD and HD95 in mm
    where ``spacing`` (row, col mm) is known, else px.
    """
    bbox = mask_bbox(mask)
    out = Accuracy(
        box_iou=(max(box_iou(bbox, b) for b in truth_boxes) if bbox else 0.0) if len(truth_boxes) else None,
        inside_box=None,
        dice=None,
        iou=None,
        nsd=None,
        hd95=None,
        box_dice=None,  # no prompt box to compare with
        surface_unit=None,
    )
    if gt_mask is not None:
        out["dice"], out["iou"] = dice(mask, gt_mask), iou(mask, gt_mask)
        _add_surface(out, mask, gt_mask, settings, spacing)
    return out


def _add_surface(
    scores: Accuracy, mask: np.ndarray, truth: np.ndarray, settings: ProcessSettings, spacing: Spacing
) -> None:
    surface = surface_scores(mask, truth, spacing, settings.nsd_tolerance, settings.nsd_tolerance_mm)
    scores["nsd"], scores["hd95"] = surface["nsd"], surface["hd95"]
    scores["surface_unit"] = surface["surface_unit"]


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
