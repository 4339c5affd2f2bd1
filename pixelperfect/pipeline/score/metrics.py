"""Accuracy metrics beyond overlap: surface distances, the RSNA challenge detection metric, reliability bins.

Pure numpy/scipy. Masks are ``(H, W)`` bool arrays; boxes XYXY pixel coordinates with exclusive ``x2``/``y2``.
Surface distances are in pixels, or in millimetres when a pixel spacing ``(row, col)`` in mm is given (row spacing
first: the distance between adjacent rows, i.e. vertically, as DICOM's PixelSpacing orders it); an anisotropic
spacing is applied per axis inside the exact Euclidean distance transform, not as a scalar afterwards.

Conventions, where the references differ (cross-checked against MONAI 1.x ``compute_surface_dice``,
``compute_hausdorff_distance(percentile=95)``, ``compute_dice``/``compute_iou`` in
``tests/pipeline/score/test_metrics_monai.py``):

- boundary: mask pixels with a 4-neighbour outside the mask, the image edge counting as outside (MONAI's
  ``get_mask_edges`` without sub-voxels: scipy ``binary_erosion`` with its default cross, XOR the mask); the size of
  a boundary is its pixel count, not DeepMind surface-distance's sub-pixel surfel areas (``use_subvoxels=True``);
- distances between pixel centres, exact Euclidean;
- NSD counts distances ``<= tolerance`` (both libraries);
- HD95: the larger of the two directed 95th percentiles (MONAI's symmetric default), not the percentile of the
  pooled distances of both directions (DeepMind's ``compute_robust_hausdorff`` also takes the max of the directed
  percentiles, but with its own sub-pixel surfel weighting); linear interpolation between order statistics
  (numpy's and ``torch.quantile``'s default);
- empty masks: MONAI returns NaN for NSD when both are empty and inf/NaN for HD95 when one is; we return values a
  mean can use (see each function).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
from scipy import ndimage

from pixelperfect.pipeline.records import Spacing
from pixelperfect.pipeline.score.overlap import box_iou

#: ``(row, col)`` pixel spacing in mm, or ``None`` for pixel units.

#: The RSNA Pneumonia Detection Challenge's IoU thresholds: 0.40, 0.45, ..., 0.75.
RSNA_THRESHOLDS: tuple[float, ...] = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))

_CROSS = ndimage.generate_binary_structure(2, 1)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: mask pixels with a 4-neighbour outside the mask (the image edge counts as outside)."""
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    return mask & ~eroded


def _crop(pred: np.ndarray, truth: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box plus ``margin`` px (distances inside are unchanged)."""
    union = pred | truth
    rows, cols = np.nonzero(union.any(axis=1))[0], np.nonzero(union.any(axis=0))[0]
    y1, y2 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, union.shape[0])
    x1, x2 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, union.shape[1])
    return pred[y1:y2, x1:x2], truth[y1:y2, x1:x2]


def check_spacing(spacing: Sequence[float] | None) -> Spacing:
    """``None`` or a validated ``(row, col)`` spacing in mm (two finite numbers > 0); ``ValueError`` names it."""
    if spacing is None:
        return None
    values = tuple(float(v) for v in spacing)
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"pixel spacing must be two finite numbers > 0 (row, col mm), got {list(spacing)}")
    return values[0], values[1]


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances: ``(d(pred boundary -> truth boundary), d(truth boundary -> pred boundary))``.

    Each is a 1-D float64 array with one Euclidean distance between pixel centres per boundary pixel: in px, or
    in mm when ``spacing`` ``(row, col)`` mm is given. Both masks must be non-empty. Computed on the union's
    bounding box (plus 1 px so edge pixels keep an outside), so the cost follows the objects' size, not the
    image's.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    if not pred.any() or not truth.any():
        raise ValueError("surface distances need two non-empty masks")
    sampling = check_spacing(spacing)
    p, t = _crop(pred.astype(bool), truth.astype(bool), 1)
    bp, bt = _boundary(p), _boundary(t)
    # distance of every pixel to the nearest truth (pred) boundary pixel, per-axis spacing inside the transform
    to_truth = ndimage.distance_transform_edt(~bt, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~bp, sampling=sampling)
    return np.asarray(to_truth[bp], np.float64), np.asarray(to_pred[bt], np.float64)


def nsd(
    pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0, spacing: Sequence[float] | None = None
) -> float | None:
    """Normalised surface distance (surface Dice) at ``tolerance``, in [0, 1]; ``tolerance`` is in px, or in mm
    when ``spacing`` ``(row, col)`` mm is given.

    The fraction of both boundaries that lies within ``tolerance`` of the other boundary (Nikolov et al. 2018,
    "Deep learning to achieve clinically applicable segmentation of head and neck anatomy", arXiv:1809.04430):
    ``(|{d_pt <= tol}| + |{d_tp <= tol}|) / (|S_p| + |S_t|)``, boundary sizes in pixels. 1.0 when both masks are
    empty (MONAI: NaN), 0.0 when exactly one is (as MONAI).
    """
    unit = "mm" if spacing is not None else "px"
    if not tolerance >= 0:
        raise ValueError(f"NSD tolerance must be >= 0 {unit}, got {tolerance}")
    has_p, has_t = bool(pred.any()), bool(truth.any())
    if not has_p and not has_t:
        return 1.0
    if not has_p or not has_t:
        return 0.0
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    return float((np.count_nonzero(d_pt <= tolerance) + np.count_nonzero(d_tp <= tolerance)) / (d_pt.size + d_tp.size))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float | None:
    """95th-percentile Hausdorff distance in px, or in mm when ``spacing`` ``(row, col)`` mm is given: the larger
    of the two directed 95th percentiles of boundary distances (the convention of MONAI's
    ``compute_hausdorff_distance(percentile=95)``; not the percentile of both directions pooled; numpy's linear
    interpolation). 0.0 when both masks are empty (MONAI: 0.0 too); ``None`` (undefined, infinite; MONAI: inf or
    NaN) when exactly one is.
    """
    has_p, has_t = bool(pred.any()), bool(truth.any())
    if not has_p and not has_t:
        return 0.0
    if not has_p or not has_t:
        return None
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


# --- RSNA challenge detection metric ---------------------------------------------------------------------------


class SurfaceScores(TypedDict):
    """NSD and HD95 of one mask and the unit they are in (``"mm"`` or ``"px"``)."""

    nsd: float | None
    hd95: float | None
    surface_unit: str


def surface_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Spacing,
    tolerance_px: float,
    tolerance_mm: float | None,
) -> SurfaceScores:
    """NSD and HD95 of a mask against its ground truth, with their unit: in mm at ``tolerance_mm`` when the image
    has a spacing and the run a mm tolerance (``surface_unit = "mm"``), else in px at ``tolerance_px``
    (``"px"``). ``pred``, ``truth``: ``(H, W)`` bool."""
    if spacing is not None and tolerance_mm is not None:
        return {
            "nsd": nsd(pred, truth, tolerance_mm, spacing),
            "hd95": hd95(pred, truth, spacing),
            "surface_unit": "mm",
        }
    return {"nsd": nsd(pred, truth, tolerance_px), "hd95": hd95(pred, truth), "surface_unit": "px"}


def rsna_image_precision(
    truth: Sequence[Sequence[float]] | np.ndarray,
    pred: Sequence[Sequence[float]] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    thresholds: Sequence[float] = RSNA_THRESHOLDS,
) -> float | None:
    """The RSNA Pneumonia Detection Challenge score of one image; ``None`` when the image does not count.

    Definition (Kaggle competition "RSNA Pneumonia Detection Challenge", evaluation page, as implemented in
    Yicheng Chen's public reference kernel https://www.kaggle.com/chenyc15/mean-average-precision-metric):
    at each IoU threshold ``t`` in 0.40:0.05:0.75, ``TP / (TP + FP + FN)``; the image's score is the mean over
    thresholds. Predicted boxes are evaluated in descending score order, each matched to the unmatched
    ground-truth box it overlaps most, a hit when that IoU is >= ``t``; unmatched predictions are FP, unmatched
    ground truth FN. An image without ground truth scores 0 if anything is predicted (all FP) and is skipped
    (``None``) if nothing is.

    ``truth``: ``(M, 4)`` XYXY; ``pred``: ``(N, 4)`` XYXY; ``scores``: ``(N,)`` confidences.
    """
    gt = np.asarray(truth, np.float64).reshape(-1, 4)
    boxes = np.asarray(pred, np.float64).reshape(-1, 4)
    conf = np.asarray(scores, np.float64).reshape(-1)
    if len(conf) != len(boxes):
        raise ValueError(f"{len(boxes)} predicted boxes but {len(conf)} scores")
    if len(gt) == 0 and len(boxes) == 0:
        return None
    if len(gt) == 0 or len(boxes) == 0:
        return 0.0
    order = np.argsort(-conf, kind="stable")  # ties keep their given order
    ious = np.array([[box_iou(boxes[i], g) for g in gt] for i in order])
    precisions = []
    for t in thresholds:
        matched = np.zeros(len(gt), bool)
        tp = 0
        for row in ious:
            candidates = np.where(~matched & (row >= t), row, -1.0)
            j = int(np.argmax(candidates))
            if candidates[j] >= 0:
                matched[j] = True
                tp += 1
        fp, fn = len(boxes) - tp, len(gt) - tp
        precisions.append(tp / (tp + fp + fn))
    return float(np.mean(precisions))


def rsna_map(
    images: Iterable[tuple[Any, Any, Any]], thresholds: Sequence[float] = RSNA_THRESHOLDS
) -> tuple[float | None, int]:
    """Mean of :func:`rsna_image_precision` over ``(truth, pred, scores)`` triples; skipped images do not count.

    Returns ``(mAP or None when no image counts, number of images counted)``.
    """
    values = [v for v in (rsna_image_precision(t, p, s, thresholds) for t, p, s in images) if v is not None]
    return (float(np.mean(values)) if values else None), len(values)


# --- calibration -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBin:
    """Segments whose predicted score falls in ``[lo, hi)`` (the last bin includes ``hi``)."""

    lo: float
    hi: float
    n: int
    score_mean: float | None
    dice_mean: float | None


def reliability_bins(
    scores: Sequence[float] | np.ndarray, dice: Sequence[float] | np.ndarray, n_bins: int = 10
) -> list[ReliabilityBin]:
    """Reliability table: equal-width score bins on [0, 1] -> mean score and mean real Dice per bin.

    Pairs where either value is missing (NaN) are dropped; scores outside [0, 1] are clipped into the end bins.
    A calibrated confidence has ``dice_mean ~= score_mean`` in every bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    s = np.asarray(scores, np.float64).reshape(-1)
    d = np.asarray(dice, np.float64).reshape(-1)
    if s.shape != d.shape:
        raise ValueError(f"{s.size} scores but {d.size} Dice values")
    keep = np.isfinite(s) & np.isfinite(d)
    s, d = s[keep], d[keep]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(np.clip(s, 0.0, 1.0), edges[1:-1], right=False), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = index == b
        n = int(sel.sum())
        out.append(
            ReliabilityBin(
                lo=float(edges[b]),
                hi=float(edges[b + 1]),
                n=n,
                score_mean=float(s[sel].mean()) if n else None,
                dice_mean=float(d[sel].mean()) if n else None,
            )
        )
    return out


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float | None:
    """Count-weighted mean of ``|score_mean - dice_mean|`` over non-empty bins (``None`` if all are empty)."""
    total = sum(b.n for b in bins)
    if total == 0:
        return None
    return float(sum(b.n * abs(b.score_mean - b.dice_mean) for b in bins if b.n) / total)  # type: ignore[operator]
