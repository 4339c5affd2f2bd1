"""One batch of decoded images through preprocessing, the segmenter and scoring -> result records.

No I/O here: inputs are decoded arrays, outputs are row dictionaries and mask PNG bytes, so the worker can fetch
the next batch and upload the last one while this one computes. Three stages, so a worker can overlap them:
:func:`prepare_image` (CPU, any thread: preprocessing variants, the segmenter's input, the prompt boxes),
:func:`predict_images` (the model: one batched encoder call per variant, one decoder call per image and variant)
and :func:`finish_image` (CPU, any thread: scores and mask PNGs). :func:`process_images` runs them in sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pixelperfect.pipeline.auto import PROMPT_MODES, AutoSettings
from pixelperfect.pipeline.metrics import hd95, nsd
from pixelperfect.pipeline.preprocess import Variant
from pixelperfect.pipeline.prompts import Jitter, clip_boxes, perturb_box, prompt_rng
from pixelperfect.pipeline.scoring import (
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
from pixelperfect.pipeline.segment import BoxPrediction, Segmenter, prepare_input


@dataclass(frozen=True)
class ProcessSettings:
    """Run-level scoring settings (stored with the run)."""

    jitter: Jitter = field(default_factory=Jitter)
    min_area: int = 250
    seed: int = 0
    png_compression: int = 1  # zlib level: 1 is ~4x faster than 6 on masks and only a few % larger
    prompt_mode: str = "boxes"  # boxes | points | auto: the run's prompt_mode column (see pipeline/auto.py)
    nsd_tolerance: float = 2.0  # px, normalised surface distance against a ground-truth mask
    auto: AutoSettings = field(default_factory=AutoSettings)

    def __post_init__(self) -> None:
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, not {self.prompt_mode!r}")
        if not 0 <= self.nsd_tolerance <= 1000:
            raise ValueError(f"NSD tolerance must be in 0..1000 px, got {self.nsd_tolerance}")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "consistency_k": self.jitter.k,
            "jitter_shift": self.jitter.shift,
            "jitter_scale": self.jitter.scale,
            "min_area": self.min_area,
            "seed": self.seed,
            "nsd_tolerance": self.nsd_tolerance,
        }
        if self.prompt_mode == "auto":
            out["auto"] = self.auto.as_dict()
        return out


@dataclass
class ImageInput:
    """A decoded image and its prompts. ``pixels``: ``(H, W)`` display values; ``boxes``: XYXY prompts."""

    key: str
    pixels: np.ndarray
    boxes: list[list[float]]
    gt_mask: np.ndarray | None = None  # (H, W) bool
    points: list[list[float]] = field(default_factory=list)  # [x, y, label] prompts of points mode


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
    """``(H, W)`` bool -> lossless 1-bit greyscale PNG. OpenCV reads it back as ``uint8`` 0/255 (any flag); PIL
    opens it in mode ``"1"`` (``np.asarray`` gives bool). One bit per pixel makes it ~5x faster to encode than an
    8-bit PNG of the same mask (1 ms for 1024² at level 1) and smaller."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression, cv2.IMWRITE_PNG_BILEVEL, 1]
    ok, buf = cv2.imencode(
        ".png", mask.view(np.uint8) if mask.dtype == bool else mask.astype(bool).view(np.uint8), params
    )
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("PNG encoding of a mask failed")
    return buf.tobytes()


@dataclass
class PreparedImage:
    """One image made ready for the model by :func:`prepare_image` (on any thread).

    ``boxes``: ``(n + n·K, 4)`` float64 XYXY, the ``n`` clipped prompt boxes then the K perturbations of each, in
    prompt order (box mode; empty in points/auto mode). ``inputs``: per variant name, the segmenter's input for the
    preprocessed image (empty for an image without prompts). ``timings``: seconds per stage.
    """

    image: ImageInput
    boxes: np.ndarray
    n_prompts: int
    inputs: dict[str, Any]
    timings: dict[str, float]


#: What the model stage gives per image and variant: the raw prediction of all its boxes (box mode, to be finished
#: by :func:`finish_image`) or, in points/auto mode where prompting and scoring interleave, the finished segments.
Prediction = BoxPrediction | list[SegmentResult]


def is_prompted(image: ImageInput, settings: ProcessSettings) -> bool:
    """boxes mode: the boxes are the prompts; points mode: the points; auto: every image (boxes are truth only)."""
    mode = settings.prompt_mode
    return bool(image.points if mode == "points" else image.boxes or mode == "auto")


def prepare_image(
    image: ImageInput, variants: Sequence[Variant], segmenter: Segmenter, settings: ProcessSettings
) -> PreparedImage:
    """CPU work before the model: every variant of the image, the segmenter's input for each, the prompt boxes."""
    t0 = time.perf_counter()
    inputs: dict[str, Any] = {}
    if is_prompted(image, settings):
        inputs = {variant.name: prepare_input(segmenter, variant(image.pixels)) for variant in variants}
    boxes, n = np.zeros((0, 4)), 0
    if settings.prompt_mode == "boxes" and inputs:
        height, width = image.pixels.shape[:2]
        base = clip_boxes(np.asarray(image.boxes, np.float64), height, width)
        jittered = [perturb_box(b, settings.jitter, prompt_rng(settings.seed, image.key, p), height, width)
                    for p, b in enumerate(base)]  # fmt: skip
        boxes, n = np.concatenate([base, *jittered]), len(base)
    timings = {"preprocess": time.perf_counter() - t0, "encode": 0.0, "prompts": 0.0, "post": 0.0}
    return PreparedImage(image, boxes, n, inputs, timings)


def predict_images(
    prepared: Sequence[PreparedImage], variants: Sequence[Variant], segmenter: Segmenter, settings: ProcessSettings
) -> list[dict[str, Prediction]]:
    """The model stage: per variant the prompted images are encoded in one batched call, then each image's prompts
    and their K perturbations go through the decoder in one call. Returns, per image, ``{variant: Prediction}``
    (empty for an image without prompts). Adds the ``encode`` and ``prompts`` timings."""
    out: list[dict[str, Prediction]] = [{} for _ in prepared]
    prompted = [i for i, prep in enumerate(prepared) if prep.inputs]
    for variant in variants if prompted else ():
        t0 = time.perf_counter()
        embeddings = segmenter.encode([prepared[i].inputs[variant.name] for i in prompted])
        share = (time.perf_counter() - t0) / len(prompted)
        for i, embedding in zip(prompted, embeddings, strict=True):
            prep = prepared[i]
            t1 = time.perf_counter()
            if settings.prompt_mode == "boxes":
                out[i][variant.name] = segmenter.predict_boxes(embedding, prep.boxes)
            else:
                from pixelperfect.pipeline.auto import segment_prompts

                out[i][variant.name] = segment_prompts(prep.image, variant.name, embedding, segmenter, settings)
            prep.timings["encode"] += share
            prep.timings["prompts"] += time.perf_counter() - t1
    return out


def finish_image(prepared: PreparedImage, predictions: dict[str, Prediction], settings: ProcessSettings) -> ImageResult:
    """CPU work after the model, for all variants of one image: scores, consistency, accuracy and mask PNGs."""
    t0 = time.perf_counter()
    segments: list[SegmentResult] = []
    for variant, prediction in predictions.items():
        if isinstance(prediction, BoxPrediction):
            segments.extend(_box_segments(prepared, variant, prediction, settings))
        else:
            segments.extend(prediction)
    prepared.timings["post"] += time.perf_counter() - t0
    return ImageResult(prepared.image.key, segments, prepared.timings)


def process_images(
    images: Sequence[ImageInput], variants: Sequence[Variant], segmenter: Segmenter, settings: ProcessSettings
) -> list[ImageResult]:
    """Segment every prompt of every image under every variant: the three stages in sequence, one
    :class:`ImageResult` per input, in order (segments in variant order, then prompt order)."""
    prepared = [prepare_image(image, variants, segmenter, settings) for image in images]
    predictions = predict_images(prepared, variants, segmenter, settings)
    return [finish_image(prep, preds, settings) for prep, preds in zip(prepared, predictions, strict=True)]


def _box_segments(
    prepared: PreparedImage, variant: str, prediction: BoxPrediction, settings: ProcessSettings
) -> list[SegmentResult]:
    image, boxes, n, k = prepared.image, prepared.boxes, prepared.n_prompts, settings.jitter.k
    out = []
    for p in range(n):
        mask = prediction.masks[p]
        jit = slice(n + p * k, n + (p + 1) * k)
        row: dict[str, Any] = {
            "variant": variant,
            "prompt_index": p,
            "prompt_kind": "box",
            "prompt": [float(v) for v in boxes[p]],
            "score": _finite(prediction.best_scores[p]),
            "scores": [_finite(v) for v in prediction.scores[p]],
            "chosen": int(prediction.chosen[p]),
            "stability": _finite(prediction.stability[p]),
            "area": int(np.count_nonzero(mask)),
            "mask_boxes": boxes_from_mask(mask, settings.min_area),
            "perturbations": [
                [*map(float, b), _finite(s)] for b, s in zip(boxes[jit], prediction.best_scores[jit], strict=True)
            ],
        }
        row.update(consistency(mask, prediction.masks[jit], prediction.best_scores[jit]))
        row.update(_accuracy(mask, boxes[p], image.gt_mask, settings.nsd_tolerance))
        out.append(SegmentResult(row, encode_mask_png(mask, settings.png_compression)))
    return out


def _accuracy(
    mask: np.ndarray, box: np.ndarray, gt_mask: np.ndarray | None, nsd_tolerance: float = 2.0
) -> dict[str, float | None]:
    bbox = mask_bbox(mask)
    scores: dict[str, float | None] = {
        "box_iou": box_iou(bbox, box) if bbox else 0.0,
        "inside_box": fraction_inside(mask, box),
        "dice": None,
        "iou": None,
        "nsd": None,
        "hd95": None,
        "box_dice": None,
    }
    if gt_mask is not None:
        truth = restrict_to_box(gt_mask, box)
        scores["dice"], scores["iou"] = dice(mask, truth), iou(mask, truth)
        scores["box_dice"] = box_dice(box, truth)
        scores["nsd"], scores["hd95"] = nsd(mask, truth, nsd_tolerance), hd95(mask, truth)
    return scores


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
