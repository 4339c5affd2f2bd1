"""One batch of decoded images through preprocessing, the segmenter and scoring -> result records.

No I/O here: inputs are decoded arrays, outputs are row dictionaries and mask PNG bytes, so the worker can fetch
the next batch and upload the last one while this one computes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pixelperfect.pipeline.preprocess import Variant
from pixelperfect.pipeline.prompts import Jitter, clip_boxes, perturb_box, prompt_rng
from pixelperfect.pipeline.scoring import (
    box_iou,
    boxes_from_mask,
    consistency,
    dice,
    fraction_inside,
    iou,
    mask_bbox,
    restrict_to_box,
)
from pixelperfect.pipeline.segment import Segmenter


@dataclass(frozen=True)
class ProcessSettings:
    """Run-level scoring settings (stored with the run)."""

    jitter: Jitter = field(default_factory=Jitter)
    min_area: int = 250
    seed: int = 0
    png_compression: int = 1  # zlib level: 1 is ~4x faster than 6 on masks and only a few % larger

    def as_dict(self) -> dict[str, Any]:
        return {
            "consistency_k": self.jitter.k,
            "jitter_shift": self.jitter.shift,
            "jitter_scale": self.jitter.scale,
            "min_area": self.min_area,
            "seed": self.seed,
        }


@dataclass
class ImageInput:
    """A decoded image and its prompts. ``pixels``: ``(H, W)`` display values; ``boxes``: XYXY prompts."""

    key: str
    pixels: np.ndarray
    boxes: list[list[float]]
    gt_mask: np.ndarray | None = None  # (H, W) bool


@dataclass
class SegmentResult:
    row: dict[str, Any]  # columns of the segments table (without ids and mask_key)
    mask_png: bytes


@dataclass
class ImageResult:
    key: str
    segments: list[SegmentResult]
    timings: dict[str, float]


def encode_mask_png(mask: np.ndarray, compression: int = 1) -> bytes:
    """``(H, W)`` bool -> lossless 8-bit PNG with 0/255 values."""
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("PNG encoding of a mask failed")
    return buf.tobytes()


def process_images(
    images: Sequence[ImageInput], variants: Sequence[Variant], segmenter: Segmenter, settings: ProcessSettings
) -> list[ImageResult]:
    """Segment every prompt of every image under every variant.

    Per variant the images are encoded in one batched call; per image and variant all prompts and their K
    perturbations go through the decoder in one call. Returns one :class:`ImageResult` per input, in order.
    """
    results = [ImageResult(img.key, [], {"preprocess": 0.0, "encode": 0.0, "prompts": 0.0}) for img in images]
    prompted = [i for i, img in enumerate(images) if img.boxes]
    if not prompted:
        return results
    for variant in variants:
        t0 = time.perf_counter()
        prepared = [variant(images[i].pixels) for i in prompted]
        t1 = time.perf_counter()
        embeddings = segmenter.encode(prepared)
        t2 = time.perf_counter()
        for i, embedding in zip(prompted, embeddings, strict=True):
            results[i].timings["preprocess"] += (t1 - t0) / len(prompted)
            results[i].timings["encode"] += (t2 - t1) / len(prompted)
            t3 = time.perf_counter()
            results[i].segments.extend(_segment_image(images[i], variant.name, embedding, segmenter, settings))
            results[i].timings["prompts"] += time.perf_counter() - t3
    return results


def _segment_image(
    image: ImageInput, variant: str, embedding: Any, segmenter: Segmenter, settings: ProcessSettings
) -> list[SegmentResult]:
    height, width = image.pixels.shape[:2]
    base = clip_boxes(np.asarray(image.boxes, np.float64), height, width)
    k = settings.jitter.k
    all_boxes = [base]
    for p, box in enumerate(base):
        all_boxes.append(perturb_box(box, settings.jitter, prompt_rng(settings.seed, image.key, p), height, width))
    prediction = segmenter.predict_boxes(embedding, np.concatenate(all_boxes))
    n = len(base)
    out = []
    for p in range(n):
        mask = prediction.masks[p]
        jit = slice(n + p * k, n + (p + 1) * k)
        row: dict[str, Any] = {
            "variant": variant,
            "prompt_index": p,
            "prompt_kind": "box",
            "prompt": [float(v) for v in base[p]],
            "score": _finite(prediction.best_scores[p]),
            "scores": [_finite(v) for v in prediction.scores[p]],
            "chosen": int(prediction.chosen[p]),
            "stability": _finite(prediction.stability[p]),
            "area": int(mask.sum()),
            "mask_boxes": boxes_from_mask(mask, settings.min_area),
            "perturbations": [
                [*map(float, b), _finite(s)]
                for b, s in zip(np.concatenate(all_boxes)[jit], prediction.best_scores[jit], strict=True)
            ],
        }
        row.update(consistency(mask, prediction.masks[jit], prediction.best_scores[jit]))
        row.update(_accuracy(mask, base[p], image.gt_mask))
        out.append(SegmentResult(row, encode_mask_png(mask, settings.png_compression)))
    return out


def _accuracy(mask: np.ndarray, box: np.ndarray, gt_mask: np.ndarray | None) -> dict[str, float | None]:
    bbox = mask_bbox(mask)
    scores: dict[str, float | None] = {
        "box_iou": box_iou(bbox, box) if bbox else 0.0,
        "inside_box": fraction_inside(mask, box),
        "dice": None,
        "iou": None,
    }
    if gt_mask is not None:
        truth = restrict_to_box(gt_mask, box)
        scores["dice"], scores["iou"] = dice(mask, truth), iou(mask, truth)
    return scores


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
