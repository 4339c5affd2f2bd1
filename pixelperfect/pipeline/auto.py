"""Prompts other than ground-truth boxes: user point prompts and the automatic mode (a grid of points).

Automatic mode follows segment-anything's ``SamAutomaticMaskGenerator`` recipe, on an embedding we already have:
a regular grid of single-point prompts decoded in batches, candidates kept when their predicted IoU and
stability clear thresholds, duplicates removed by box NMS (``torchvision.ops.nms``, as the generator does),
optionally only masks inside a lung-field estimate. Every kept mask is then re-decoded from K jittered copies of
its point, so automatic and point segments carry the same consistency scores as box segments.

Pure: arrays in, rows and mask PNG bytes out (see :mod:`pixelperfect.pipeline.process`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pixelperfect.pipeline.metrics import hd95, nsd
from pixelperfect.pipeline.prompts import Jitter, prompt_rng
from pixelperfect.pipeline.scoring import box_iou, boxes_from_mask, consistency, dice, iou, mask_bbox
from pixelperfect.pipeline.steps import to_uint8

if TYPE_CHECKING:
    from pixelperfect.pipeline.process import ImageInput, ProcessSettings, SegmentResult
    from pixelperfect.pipeline.segment import BoxPrediction, Segmenter

PROMPT_MODES = ("boxes", "points", "auto")
_LUNG_WORK_SIZE = 256  # the lung-field estimate runs at this long side: it is a coarse shape


@dataclass(frozen=True)
class AutoSettings:
    """Automatic-mode parameters (stored with the run).

    Thresholds are segment-anything's generator defaults (``pred_iou_thresh=0.88``,
    ``stability_score_thresh=0.95``, ``box_nms_thresh=0.7``); the grid is 16 per side instead of 32 because
    lesions in a chest film are large and each point costs a decoder pass.
    """

    points_per_side: int = 16
    points_batch: int = 64  # prompts per decoder call: 64 x H x W float32 logits (256 MiB at 1024^2)
    min_score: float = 0.88
    min_stability: float = 0.95
    nms_iou: float = 0.7
    lung_only: bool = True
    lung_fraction: float = 0.5  # a kept mask has at least this fraction of its area in the lung field
    max_masks: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.points_per_side <= 128:
            raise ValueError(f"points_per_side must be in 1..128, got {self.points_per_side}")
        if not 1 <= self.points_batch <= 4096:
            raise ValueError(f"points_batch must be in 1..4096, got {self.points_batch}")
        for name in ("min_score", "min_stability", "nms_iou", "lung_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"auto {name} must be in [0, 1], got {value}")
        if self.max_masks < 1:
            raise ValueError(f"auto max_masks must be >= 1, got {self.max_masks}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AutoSettings:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (values or {}).items() if k in known})


# --- prompts ---------------------------------------------------------------------------------------------------


def grid_points(height: int, width: int, per_side: int) -> np.ndarray:
    """``(per_side**2, 2)`` float64 XY pixel coordinates at the centres of a ``per_side`` x ``per_side`` grid."""
    if per_side < 1:
        raise ValueError(f"per_side must be >= 1, got {per_side}")
    offsets = (np.arange(per_side) + 0.5) / per_side
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def perturb_point(
    point: Sequence[float], jitter: Jitter, rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """``(K, 2)`` copies of an XY point shifted by integers in ``±jitter.shift`` px, clipped into the image."""
    shifts = rng.integers(-jitter.shift, jitter.shift + 1, size=(jitter.k, 2))
    out = np.asarray(point, np.float64)[None, :2] + shifts
    out[:, 0] = out[:, 0].clip(0, width - 1)
    out[:, 1] = out[:, 1].clip(0, height - 1)
    return out


def parse_points_csv(text: str, name: str = "points.csv") -> dict[str, list[list[float]]]:
    """``key,x,y[,label]`` rows -> ``{key: [[x, y, label], ...]}``; label 1 (default) foreground, 0 background.

    Each foreground point becomes one prompt; the background points of the same image join every one of them.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in ("key", "x", "y") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{name}:1: header lacks column(s) {', '.join(missing)}; expected key,x,y[,label]")
    out: dict[str, list[list[float]]] = {}
    for row in reader:
        where = f"{name}:{reader.line_num}"
        key = (row.get("key") or "").strip()
        if not key:
            raise ValueError(f"{where}: empty key")
        try:
            x, y = float(row["x"]), float(row["y"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: x and y must be numbers, got {row.get('x')!r}, {row.get('y')!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise ValueError(f"{where}: x and y must be finite and >= 0, got {x}, {y}")
        label_text = (row.get("label") or "1").strip()
        if label_text not in ("0", "1"):
            raise ValueError(f"{where}: label must be 0 or 1, got {label_text!r}")
        out.setdefault(key, []).append([x, y, float(label_text)])
    return out


# --- lung field ------------------------------------------------------------------------------------------------


def lung_field(pixels: np.ndarray) -> np.ndarray:
    """A coarse lung-field estimate of a frontal chest film: ``(H, W)`` bool.

    Heuristic, no model: at 256 px, smooth, threshold dark (air-filled) regions with Otsu, drop regions touching
    the image border (air outside the body) and specks, then take the convex hull of what remains on each side of
    the image's vertical midline (so a dense opacity that splits, notches or perforates a lung stays inside it)
    and widen it by 2 % of the image side. Returns all-True when nothing plausible is found, so a failed estimate
    never removes masks.
    """
    image = to_uint8(np.asarray(pixels))
    height, width = image.shape
    scale = _LUNG_WORK_SIZE / max(height, width)
    size = (max(round(width * scale), 8), max(round(height * scale), 8))
    small = cv2.GaussianBlur(cv2.resize(image, size, interpolation=cv2.INTER_AREA), (0, 0), 2.5)
    _, dark = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(dark.astype(np.uint8), connectivity=4)
    h, w = small.shape
    sides: list[list[np.ndarray]] = [[], []]
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if x == 0 or y == 0 or x + bw == w or y + bh == h or area < 0.003 * h * w:
            continue
        ys, xs = np.nonzero(labels == i)
        sides[int(centroids[i][0] >= w / 2)].append(np.stack([xs, ys], axis=1).astype(np.int32))
    if not sides[0] and not sides[1]:
        return np.ones((height, width), bool)
    field = np.zeros((h, w), np.uint8)
    for parts in sides:
        if parts:
            cv2.fillPoly(field, [cv2.convexHull(np.concatenate(parts))], 1)
    grow = max(int(0.02 * _LUNG_WORK_SIZE), 1)
    field = cv2.dilate(field, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_NEAREST) > 0


# --- segmenting ------------------------------------------------------------------------------------------------


def segment_prompts(
    image: ImageInput, variant: str, embedding: Any, segmenter: Segmenter, settings: ProcessSettings
) -> list[SegmentResult]:
    """The segments of one image under one variant for ``settings.prompt_mode`` ``points`` or ``auto``."""
    if settings.prompt_mode == "points":
        return _segment_points(image, variant, embedding, segmenter, settings)
    if settings.prompt_mode == "auto":
        return _segment_auto(image, variant, embedding, segmenter, settings)
    raise ValueError(f"segment_prompts handles prompt modes points and auto, not {settings.prompt_mode!r}")


def _segment_points(
    image: ImageInput, variant: str, embedding: Any, segmenter: Segmenter, settings: ProcessSettings
) -> list[SegmentResult]:
    pts = np.asarray(image.points, np.float64).reshape(-1, 3)
    positive, negative = pts[pts[:, 2] == 1, :2], pts[pts[:, 2] == 0, :2]
    if len(positive) == 0:
        return []
    pred, jittered = _decode_with_jitter(image, embedding, segmenter, settings, positive, negative)
    return [_result(image, variant, p, "point", positive[p], pred, jittered, settings) for p in range(len(positive))]


def _segment_auto(
    image: ImageInput, variant: str, embedding: Any, segmenter: Segmenter, settings: ProcessSettings
) -> list[SegmentResult]:
    cfg = settings.auto
    height, width = image.pixels.shape[:2]
    points = grid_points(height, width, cfg.points_per_side)
    lung = lung_field(image.pixels) if cfg.lung_only else None
    if lung is not None:
        points = points[lung[points[:, 1].astype(int), points[:, 0].astype(int)]]
    kept_masks, kept_scores, kept_points = [], [], []
    for start in range(0, len(points), cfg.points_batch):
        chunk = points[start : start + cfg.points_batch]
        pred = segmenter.predict_points(embedding, chunk[:, None, :], np.ones((len(chunk), 1), np.int64))
        best, stability = pred.best_scores, pred.stability
        for i in np.nonzero((best >= cfg.min_score) & (stability >= cfg.min_stability))[0]:
            mask = pred.masks[i]
            area = int(mask.sum())
            if area <= settings.min_area:
                continue
            if lung is not None and np.count_nonzero(mask & lung) < cfg.lung_fraction * area:
                continue
            kept_masks.append(mask)
            kept_scores.append(float(best[i]))
            kept_points.append(chunk[i])
    if not kept_masks:
        return []
    keep = _nms(kept_masks, kept_scores, cfg.nms_iou)[: cfg.max_masks]
    seeds = np.asarray([kept_points[i] for i in keep])
    pred, jittered = _decode_with_jitter(image, embedding, segmenter, settings, seeds, np.zeros((0, 2)))
    return [_result(image, variant, n, "auto", seeds[n], pred, jittered, settings) for n in range(len(seeds))]


def _nms(masks: list[np.ndarray], scores: list[float], threshold: float) -> list[int]:
    """Indices kept by box NMS on the masks' tight boxes, best score first."""
    import torch
    from torchvision.ops import nms

    boxes = torch.tensor([mask_bbox(m) for m in masks], dtype=torch.float32)
    return [int(i) for i in nms(boxes, torch.tensor(scores, dtype=torch.float32), threshold)]


def _decode_with_jitter(
    image: ImageInput,
    embedding: Any,
    segmenter: Segmenter,
    settings: ProcessSettings,
    positive: np.ndarray,
    negative: np.ndarray,
) -> tuple[BoxPrediction, np.ndarray]:
    """Decode each foreground point (plus all background points) and its K jittered copies in one call.

    Returns the prediction (``M`` base prompts first, then ``K`` per prompt, prompt-major) and the ``(M * K, 2)``
    jittered points.
    """
    height, width = image.pixels.shape[:2]
    k = settings.jitter.k
    jit = [
        perturb_point(p, settings.jitter, prompt_rng(settings.seed, image.key, i), height, width)
        for i, p in enumerate(positive)
    ]
    fg = np.concatenate([positive, *jit]) if k else positive
    coords = np.concatenate([fg[:, None, :], np.broadcast_to(negative, (len(fg), *negative.shape))], axis=1)
    labels = np.concatenate([np.ones((len(fg), 1), np.int64), np.zeros((len(fg), len(negative)), np.int64)], axis=1)
    return segmenter.predict_points(embedding, coords, labels), fg[len(positive) :]


def _result(
    image: ImageInput,
    variant: str,
    index: int,
    kind: str,
    point: np.ndarray,
    pred: BoxPrediction,
    jittered: np.ndarray,
    settings: ProcessSettings,
) -> SegmentResult:
    from pixelperfect.pipeline.process import SegmentResult, encode_mask_png

    p, k = index, settings.jitter.k
    m = len(pred.chosen) // (k + 1)
    mask = pred.masks[p]
    jit = slice(m + p * k, m + (p + 1) * k)
    best = pred.best_scores
    row: dict[str, Any] = {
        "variant": variant,
        "prompt_index": index,
        "prompt_kind": kind,
        "prompt": [float(point[0]), float(point[1])],
        "score": _finite(best[p]),
        "scores": [_finite(v) for v in pred.scores[p]],
        "chosen": int(pred.chosen[p]),
        "stability": _finite(pred.stability[p]),
        "area": int(mask.sum()),
        "mask_boxes": boxes_from_mask(mask, settings.min_area),
        "perturbations": [
            [float(x), float(y), _finite(s)] for (x, y), s in zip(jittered[p * k : (p + 1) * k], best[jit], strict=True)
        ],
    }
    row.update(consistency(mask, pred.masks[jit], best[jit]))
    row.update(full_image_accuracy(mask, image.boxes, image.gt_mask, settings.nsd_tolerance))
    return SegmentResult(row, encode_mask_png(mask, settings.png_compression))


def full_image_accuracy(
    mask: np.ndarray, truth_boxes: Sequence[Sequence[float]], gt_mask: np.ndarray | None, tolerance: float
) -> dict[str, float | None]:
    """Accuracy of a segment that was not prompted by a ground-truth box: overlap with the whole ground-truth
    mask, and ``box_iou`` = the best IoU of the mask's tight box with any ground-truth box (``None`` without
    boxes; 0.0 for an empty mask). ``inside_box`` and ``box_dice`` do not apply (``None``).
    """
    bbox = mask_bbox(mask)
    out: dict[str, float | None] = {
        "box_iou": (max(box_iou(bbox, b) for b in truth_boxes) if bbox else 0.0) if len(truth_boxes) else None,
        "inside_box": None,
        "dice": None,
        "iou": None,
        "nsd": None,
        "hd95": None,
        "box_dice": None,  # no prompt box to compare with
    }
    if gt_mask is not None:
        out.update(
            dice=dice(mask, gt_mask),
            iou=iou(mask, gt_mask),
            nsd=nsd(mask, gt_mask, tolerance),
            hd95=hd95(mask, gt_mask),
        )
    return out


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
