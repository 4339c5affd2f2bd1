"""Box-prompted segmenters behind one interface: SAM (``pipeline/sam.py``: batched encoder, prompts batched per
image) and GrabCut. This module does not import torch: the producer and the report use its types without loading
libtorch (~700 MiB of RSS); :func:`build_segmenter` imports SAM when a SAM model is asked for.

Encode once, prompt many: :meth:`Segmenter.encode` turns a list of preprocessed images into embeddings (one
encoder pass per chunk of images); :meth:`Segmenter.predict_boxes` decodes any number of boxes on one embedding
in a single call — the ground-truth prompts and their perturbations together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

#: segment-anything's automatic generator uses an offset of 1.0 on the mask logits for its stability score.
STABILITY_OFFSET = 1.0


@dataclass
class BoxPrediction:
    """Masks for ``M`` boxes on an image of ``(H, W)`` pixels.

    ``masks``: ``(M, H, W)`` bool, the chosen mask per box (highest predicted IoU). ``scores``: ``(M, C)``
    float32 predicted IoUs of all ``C`` candidate masks (``C = 3`` for SAM; NaN where a model has none).
    ``chosen``: ``(M,)`` int index of the chosen candidate. ``stability``: ``(M,)`` float32, IoU of the chosen
    mask's logits thresholded at ``±STABILITY_OFFSET`` (NaN for models without logits).
    """

    masks: np.ndarray
    scores: np.ndarray
    chosen: np.ndarray
    stability: np.ndarray

    @property
    def best_scores(self) -> np.ndarray:
        return self.scores[np.arange(len(self.chosen)), self.chosen]


class Segmenter(Protocol):
    name: str

    def encode(self, images: Sequence[Any]) -> list[Any]:
        """``images``: ``(H, W) uint8`` preprocessed greyscale, or what :func:`prepare_input` made of them (the
        worker prepares images on its I/O threads). Returns one opaque embedding per image."""

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> BoxPrediction:
        """``boxes``: ``(M, 4)`` float XYXY in the image's own pixel coordinates."""

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> BoxPrediction:
        """``points``: ``(M, P, 2)`` float XY; ``labels``: ``(M, P)`` int, 1 foreground / 0 background."""


def empty_prediction(height: int, width: int) -> BoxPrediction:
    return BoxPrediction(
        np.zeros((0, height, width), bool),
        np.zeros((0, 3), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
    )


def prepare_input(segmenter: Any, image: np.ndarray) -> Any:
    """The segmenter's CPU-side input for ``image`` (its ``prepare`` when it has one, else the array itself)."""
    prepare = getattr(segmenter, "prepare", None)
    return prepare(image) if prepare is not None else image


class GrabCutSegmenter:
    """The classical baseline: OpenCV GrabCut initialised with the box (no learned prior, no confidence).

    Runs at most at ``work_size`` pixels on the long side (GrabCut's cost grows with the pixel count) and scales
    the mask back; scores and stability are NaN.
    """

    name = "grabcut"
    POINT_BOX_FRACTION = 0.25  # a point prompt becomes a box a quarter of the image's shorter side wide

    def __init__(self, iterations: int = 3, work_size: int = 512) -> None:
        if iterations < 1:
            raise ValueError(f"grabcut iterations must be >= 1, got {iterations}")
        if work_size < 64:
            raise ValueError(f"grabcut work_size must be >= 64, got {work_size}")
        self.iterations, self.work_size = iterations, work_size

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        return list(images)

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> BoxPrediction:
        image: np.ndarray = embedding
        height, width = image.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        small = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR) if small.ndim == 2 else small
        masks = np.zeros((len(boxes), height, width), bool)
        for i, mask_small in enumerate(self._cut(bgr, np.asarray(boxes, np.float64) * scale)):
            masks[i] = cv2.resize(mask_small.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        n = len(boxes)
        return BoxPrediction(
            masks, np.full((n, 1), np.nan, np.float32), np.zeros(n, np.int64), np.full(n, np.nan, np.float32)
        )

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> BoxPrediction:
        """Point prompts for the baseline: GrabCut needs a rectangle, so each prompt's first foreground point
        becomes a square box of side ``POINT_BOX_FRACTION`` x the image's shorter side (background points are
        ignored). A crude baseline, documented as such.
        """
        image: np.ndarray = embedding
        height, width = image.shape[:2]
        pts = np.asarray(points, np.float64).reshape(len(points), -1, 2)
        lab = np.asarray(labels).reshape(len(pts), -1)
        half = self.POINT_BOX_FRACTION * min(height, width) / 2
        boxes = np.zeros((len(pts), 4))
        for i, (p, lb) in enumerate(zip(pts, lab, strict=True)):
            x, y = p[int(np.argmax(lb == 1))] if (lb == 1).any() else p[0]
            boxes[i] = [max(x - half, 0), max(y - half, 0), min(x + half, width), min(y + half, height)]
        return self.predict_boxes(embedding, boxes)

    def _cut(self, bgr: np.ndarray, boxes: np.ndarray) -> Iterator[np.ndarray]:
        h, w = bgr.shape[:2]
        for x1, y1, x2, y2 in boxes:
            x1c, y1c = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.floor(y1), 0, h - 1))
            x2c, y2c = int(np.clip(np.ceil(x2), x1c + 1, w)), int(np.clip(np.ceil(y2), y1c + 1, h))
            rect = (x1c, y1c, x2c - x1c, y2c - y1c)
            if rect[2] < 3 or rect[3] < 3:
                out = np.zeros((h, w), bool)
                out[y1c:y2c, x1c:x2c] = True
                yield out
                continue
            mask = np.zeros((h, w), np.uint8)
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.setRNGSeed(0)  # GrabCut initialises its GMMs with k-means: seed it for repeatable masks
            try:
                cv2.grabCut(bgr, mask, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
            except cv2.error:  # a flat box region has no foreground model to fit
                yield np.zeros((h, w), bool)
                continue
            yield (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def build_segmenter(
    model: str,
    checkpoint_bytes: bytes | None,
    device: str = "auto",
    *,
    encoder_batch: int = 8,
    precision: str = "auto",
    compile_encoder: bool = False,
) -> Segmenter:
    """The segmenter for ``model``; loads weights once (call it once per worker process)."""
    if model == "grabcut":
        return GrabCutSegmenter()
    from pixelperfect.pipeline.models import load_sam, resolve_device
    from pixelperfect.pipeline.sam import SamSegmenter

    sam = load_sam(model, checkpoint_bytes)
    return SamSegmenter(
        sam,
        resolve_device(device),
        name=model,
        encoder_batch=encoder_batch,
        precision=precision,
        compile_encoder=compile_encoder,
    )
