"""Prompts other than ground-truth boxes: user point prompts and the automatic mode (a grid of points).

Automatic mode follows segment-anything's ``SamAutomaticMaskGenerator`` recipe, on an embedding we already have:
a regular grid of single-point prompts (``amg.build_point_grid``) decoded in batches, candidates kept when their
predicted IoU and stability clear thresholds, duplicates removed by box NMS (``torchvision.ops.nms``, as the
generator does), optionally only masks inside a lung-field estimate. Every kept mask is then re-decoded from K
jittered copies of its point, so automatic and point segments carry the same consistency scores as box segments.

Model stage only: :func:`predict_prompts` returns the same :class:`~pixelperfect.pipeline.model.protocol.Prediction`
as box prompts give; scoring and PNG encoding happen after, on the post threads
(:mod:`pixelperfect.pipeline.score.segments`). Imports torch only when the automatic mode runs.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pixelperfect.pipeline.model.protocol import Prediction, Segmenter, empty_prediction
from pixelperfect.pipeline.options import Jitter, ProcessSettings, PromptKind, PromptMode
from pixelperfect.pipeline.preprocess.steps import to_uint8
from pixelperfect.pipeline.prompt.boxes import prompt_rng
from pixelperfect.pipeline.records import ImageInput

_LUNG_WORK_SIZE = 256  # the lung-field estimate runs at this long side: it is a coarse shape


# --- prompts ---------------------------------------------------------------------------------------------------


def grid_points(height: int, width: int, per_side: int) -> np.ndarray:
    """``(per_side**2, 2)`` float64 XY pixel coordinates at the centres of a ``per_side`` x ``per_side`` grid, x
    varying fastest (segment-anything's ``build_point_grid``, scaled from ``[0, 1]`` to the image)."""
    from segment_anything.utils.amg import build_point_grid

    if per_side < 1:
        raise ValueError(f"per_side must be >= 1, got {per_side}")
    return np.asarray(build_point_grid(per_side), np.float64) * np.array([width, height], np.float64)


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


# --- the model stage ------------------------------------------------------------------------------------------


def predict_prompts(image: ImageInput, embedding: Any, segmenter: Segmenter, settings: ProcessSettings) -> Prediction:
    """The prediction of one image's embedding for ``settings.prompt_mode`` ``points`` or ``auto``: the prompts
    (``(n, 2)`` XY) and their K jittered copies, decoded in one call (the automatic mode first decodes its grid
    to choose the prompts)."""
    if settings.prompt_mode == PromptMode.points:
        pts = np.asarray(image.points, np.float64).reshape(-1, 3)
        positive, negative = pts[pts[:, 2] == 1, :2], pts[pts[:, 2] == 0, :2]
        return _decode_with_jitter(PromptKind.point, image, embedding, segmenter, settings, positive, negative)
    if settings.prompt_mode == PromptMode.auto:
        seeds = auto_seeds(image, embedding, segmenter, settings)
        return _decode_with_jitter(PromptKind.auto, image, embedding, segmenter, settings, seeds, np.zeros((0, 2)))
    raise ValueError(f"predict_prompts handles prompt modes points and auto, not {settings.prompt_mode!r}")


def auto_seeds(image: ImageInput, embedding: Any, segmenter: Segmenter, settings: ProcessSettings) -> np.ndarray:
    """The automatic mode's prompts, ``(n, 2)`` float64 XY, best first: the grid points whose masks clear the
    score, stability, area and lung-field thresholds and survive box NMS (at most ``max_masks``)."""
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
            area = int(np.count_nonzero(mask))
            if area <= settings.min_area:
                continue
            if lung is not None and np.count_nonzero(mask & lung) < cfg.lung_fraction * area:
                continue
            kept_masks.append(mask)
            kept_scores.append(float(best[i]))
            kept_points.append(chunk[i])
    if not kept_masks:
        return np.zeros((0, 2))
    keep = _nms(kept_masks, kept_scores, cfg.nms_iou)[: cfg.max_masks]
    return np.asarray([kept_points[i] for i in keep], np.float64).reshape(-1, 2)


def _nms(masks: list[np.ndarray], scores: list[float], threshold: float) -> list[int]:
    """Indices kept by box NMS on the masks' tight boxes, best score first. The boxes are segment-anything's
    ``batched_mask_to_box`` with exclusive ``x2, y2`` (ours everywhere: ``scoring.mask_bbox``)."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box
    from torchvision.ops import nms

    boxes = batched_mask_to_box(torch.from_numpy(np.stack(masks))).float() + torch.tensor([0.0, 0.0, 1.0, 1.0])
    return [int(i) for i in nms(boxes, torch.tensor(scores, dtype=torch.float32), threshold)]


def _decode_with_jitter(
    kind: PromptKind,
    image: ImageInput,
    embedding: Any,
    segmenter: Segmenter,
    settings: ProcessSettings,
    positive: np.ndarray,
    negative: np.ndarray,
) -> Prediction:
    """Decode each foreground point (plus all background points) and its K jittered copies in one call: the
    masks of the ``M`` base prompts first, then ``K`` per prompt, prompt-major."""
    height, width = image.pixels.shape[:2]
    if len(positive) == 0:
        return Prediction(kind, np.zeros((0, 2)), np.zeros((0, 2)), empty_prediction(height, width))
    k = settings.jitter.k
    jit = [
        perturb_point(p, settings.jitter, prompt_rng(settings.seed, image.key, i), height, width)
        for i, p in enumerate(positive)
    ]
    fg = np.concatenate([positive, *jit]) if k else positive
    coords = np.concatenate([fg[:, None, :], np.broadcast_to(negative, (len(fg), *negative.shape))], axis=1)
    labels = np.concatenate([np.ones((len(fg), 1), np.int64), np.zeros((len(fg), len(negative)), np.int64)], axis=1)
    output = segmenter.predict_points(embedding, coords, labels)
    return Prediction(kind, positive, fg[len(positive) :], output)
