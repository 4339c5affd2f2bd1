"""Segmenters built by name behind one interface: the prediction contract, and a batched encoder equal to one call per
image."""

from __future__ import annotations

import numpy as np
import torch

from pixelperfect.pipeline.model.builder import build_segmenter


def _image(seed: int = 0, size: int = 192) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size)) * 60).astype(np.uint8)
    img[60:120, 50:130] += 120
    return img


BOXES = np.array([[50, 60, 130, 120], [10, 10, 60, 40]], np.float64)


def test_prediction_contract_and_batched_encoder_equals_single() -> None:
    seg = build_segmenter("sam_tiny", None, "cpu", encoder_batch=2)
    images = [_image(i) for i in range(3)]
    batched = seg.encode(images)
    single = [seg.encode([img])[0] for img in images]
    for a, b in zip(batched, single, strict=True):
        assert torch.allclose(a.features, b.features, atol=1e-4)
    pred = seg.predict_boxes(batched[0], BOXES)
    assert pred.masks.shape == (2, 192, 192) and pred.masks.dtype == bool
    assert pred.scores.shape == (2, 3) and pred.chosen.shape == (2,)
    assert np.allclose(pred.best_scores, pred.scores.max(1))
    assert ((pred.stability >= 0) & (pred.stability <= 1)).all()
    empty = seg.predict_boxes(batched[0], np.zeros((0, 4)))
    assert empty.masks.shape == (0, 192, 192)
