"""The classical baseline segmenter, GrabCut, behind :class:`~pixelperfect.pipeline.model.protocol.Segmenter` (SAM
is ``pipeline/model/sam.py``; :func:`pixelperfect.pipeline.model.builder.build_segmenter` picks one). No torch here.

Encode once, prompt many: :meth:`Segmenter.encode` turns a list of preprocessed images into embeddings (one
encoder pass per chunk of images); :meth:`Segmenter.predict_boxes` decodes any number of boxes on one embedding
in a single call — the ground-truth prompts and their perturbations together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pixelperfect.pipeline.model.protocol import MaskPrediction


class GrabCutSegmenter:
    """The classical baseline: OpenCV GrabCut initialised with the box (no learned prior, no confidence).

    Each box is cut in its own crop: the box and ``MARGIN`` x its size around it, so the background model learns
    the tissue around the opacity rather than the whole radiograph (whose grey levels span the opacity's: on the
    phantoms a whole-image cut returned an empty mask for every box). The crop is cut at most at ``work_size``
    pixels on the long side and the mask scaled back.

    A cut that keeps less than ``MIN_KEPT`` of its box has collapsed (both colour models explain the box). It is
    cut again on texture channels (grey level, its 5x5 local mean and local standard deviation: an opacity differs
    from the lung by its texture as much as by its brightness; they blur edges by ~2 px, so they are not the first
    try). When that collapses too, the box itself is returned and marked as candidate 1 (``chosen``), so reports
    can count collapses. Scores and stability are NaN.
    """

    name = "grabcut"
    POINT_BOX_FRACTION = 0.25  # a point prompt becomes a box a quarter of the image's shorter side wide
    MARGIN = 0.5
    MIN_KEPT = 0.10
    CUT, BOX = 0, 1  # the candidates: GrabCut's mask, or the box when the cut collapsed

    def __init__(self, iterations: int = 3, work_size: int = 512) -> None:
        if iterations < 1:
            raise ValueError(f"grabcut iterations must be >= 1, got {iterations}")
        if work_size < 64:
            raise ValueError(f"grabcut work_size must be >= 64, got {work_size}")
        self.iterations, self.work_size = iterations, work_size

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        return list(images)

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> MaskPrediction:
        image: np.ndarray = embedding
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        height, width = grey.shape
        box_array = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(box_array)
        masks = np.zeros((n, height, width), bool)
        chosen = np.full(n, self.CUT, np.int64)
        for i, box in enumerate(box_array):
            x1 = int(np.clip(np.floor(box[0]), 0, width - 1))
            y1 = int(np.clip(np.floor(box[1]), 0, height - 1))
            x2 = int(np.clip(np.ceil(box[2]), x1 + 1, width))
            y2 = int(np.clip(np.ceil(box[3]), y1 + 1, height))
            least = self.MIN_KEPT * (x2 - x1) * (y2 - y1)
            for channels in (_grey_channels, _texture_channels):
                masks[i] = False
                if self._cut(grey, x1, y1, x2, y2, channels, masks[i]) and (
                    np.count_nonzero(masks[i, y1:y2, x1:x2]) >= least
                ):
                    break
            else:
                masks[i] = False
                masks[i, y1:y2, x1:x2] = True
                chosen[i] = self.BOX
        return MaskPrediction(masks, np.full((n, 2), np.nan, np.float32), chosen, np.full(n, np.nan, np.float32))

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> MaskPrediction:
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

    def _cut(self, grey: np.ndarray, x1: int, y1: int, x2: int, y2: int, channels: Any, out: np.ndarray) -> bool:
        """GrabCut of the box ``x1..x2, y1..y2`` in its crop, written into ``out``; False when it cannot run
        (a box under 3 px, or a flat crop with no colour model to fit)."""
        height, width = grey.shape
        bw, bh = x2 - x1, y2 - y1
        cx1, cy1 = max(0, int(x1 - self.MARGIN * bw)), max(0, int(y1 - self.MARGIN * bh))
        cx2, cy2 = min(width, int(np.ceil(x2 + self.MARGIN * bw))), min(height, int(np.ceil(y2 + self.MARGIN * bh)))
        crop = grey[cy1:cy2, cx1:cx2]
        scale = min(1.0, self.work_size / max(crop.shape))
        if scale < 1.0:
            crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)  # fmt: skip
        rect = (round((x1 - cx1) * scale), round((y1 - cy1) * scale), round(bw * scale), round(bh * scale))
        rect = (rect[0], rect[1], min(rect[2], crop.shape[1] - rect[0]), min(rect[3], crop.shape[0] - rect[1]))
        if rect[2] < 3 or rect[3] < 3:
            return False
        mask = np.zeros(crop.shape, np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut initialises its GMMs with k-means: seed it for repeatable masks
        try:
            cv2.grabCut(channels(crop), mask, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:  # a flat crop has no colour model to fit
            return False
        kept = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
        if scale < 1.0:
            kept = cv2.resize(kept, (cx2 - cx1, cy2 - cy1), interpolation=cv2.INTER_NEAREST)
        out[cy1:cy2, cx1:cx2] = kept > 0
        return True


def _grey_channels(grey: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def _texture_channels(grey: np.ndarray) -> np.ndarray:
    """``(h, w)`` uint8 -> ``(h, w, 3)`` uint8: the grey level, its 5x5 local mean and 4 x its local standard
    deviation (clipped), as GrabCut's three colour channels."""
    values = grey.astype(np.float32)
    mean = cv2.blur(values, (5, 5))
    std = np.sqrt(np.maximum(cv2.blur(values * values, (5, 5)) - mean * mean, 0))
    return np.dstack([grey, np.clip(mean, 0, 255).astype(np.uint8), np.clip(4 * std, 0, 255).astype(np.uint8)])
