"""Prompts: ground-truth boxes and their seeded perturbations (the research's consistency protocol).

Boxes are ``(M, 4)`` float64 XYXY pixel coordinates of the original image, ``x2``/``y2`` exclusive.
"""

from __future__ import annotations

import zlib

import numpy as np

from pixelperfect.pipeline.options import Jitter


def prompt_rng(seed: int, key: str, prompt_index: int, variant: str = "") -> np.random.Generator:
    """A generator seeded by run seed, image key and prompt: the same numbers in every process and re-run.

    The variant is deliberately *not* mixed in by default, so every variant of an image sees the same jitter and
    before/after comparisons are paired.
    """
    return np.random.default_rng([seed, zlib.crc32(key.encode()), prompt_index, zlib.crc32(variant.encode())])


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.asarray(boxes, np.float64).copy().reshape(-1, 4)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def perturb_box(box: np.ndarray, jitter: Jitter, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``(K, 4)`` perturbed copies of one XYXY box, clipped to the image and at least 2 px wide and high."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    shifts = rng.integers(-jitter.shift, jitter.shift + 1, size=(jitter.k, 2))
    scales = 1.0 + rng.uniform(-jitter.scale, jitter.scale, size=jitter.k)
    ncx, ncy = cx + shifts[:, 0], cy + shifts[:, 1]
    nw, nh = np.maximum(w * scales, 2.0), np.maximum(h * scales, 2.0)
    out = np.stack([ncx - nw / 2, ncy - nh / 2, ncx + nw / 2, ncy + nh / 2], axis=1)
    return clip_boxes(np.round(out), height, width)


def xywh_to_xyxy(x: float, y: float, w: float, h: float) -> list[float]:
    """RSNA's top-left XYWH to XYXY (converted once, at import)."""
    if w <= 0 or h <= 0:
        raise ValueError(f"box width and height must be positive, got w={w}, h={h}")
    return [float(x), float(y), float(x + w), float(y + h)]
