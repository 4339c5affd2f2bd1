"""Where we use segment-anything's ``utils.amg`` instead of our own code, the outputs are the ones ours gave."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score

from pixelperfect.pipeline.model.protocol import STABILITY_OFFSET
from pixelperfect.pipeline.prompt.auto import grid_points
from pixelperfect.pipeline.score.overlap import mask_bbox


def test_grid_points_are_amgs_grid_scaled_to_the_image() -> None:
    for per_side, (h, w) in [(1, (10, 10)), (4, (256, 256)), (16, (1024, 768)), (7, (300, 200))]:
        offsets = (np.arange(per_side) + 0.5) / per_side  # our former grid: cell centres, x fastest
        xs, ys = np.meshgrid(offsets * w, offsets * h)
        ours = np.stack([xs.ravel(), ys.ravel()], axis=1)
        assert np.allclose(grid_points(h, w, per_side), ours, rtol=0, atol=1e-9)
        assert np.allclose(grid_points(h, w, per_side), build_point_grid(per_side) * [w, h])


def test_amg_boxes_are_our_tight_boxes_with_inclusive_corners() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((20, 40, 50), bool)
    for m in masks[1:]:  # the first stays empty
        x1, y1 = rng.integers(0, 45), rng.integers(0, 35)
        m[y1 : y1 + rng.integers(1, 10), x1 : x1 + rng.integers(1, 10)] = True
        m |= rng.random(m.shape) > 0.995
    theirs = batched_mask_to_box(torch.from_numpy(masks)).numpy()
    assert mask_bbox(masks[0]) is None and theirs[0].tolist() == [0, 0, 0, 0]
    for m, box in zip(masks[1:], theirs[1:], strict=True):
        assert mask_bbox(m) == (box + np.array([0, 0, 1, 1])).tolist()  # ours: exclusive x2, y2 (numpy, no torch)


def test_stability_is_amgs_with_zero_for_an_empty_mask() -> None:
    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam

    torch.manual_seed(0)
    images = [(np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)]
    boxes = np.array([[5.0, 5, 40, 50], [0, 0, 64, 64], [30, 10, 60, 30]])
    sam = build_tiny_sam(TinyConfig())
    host = SamSegmenter(sam, torch.device("cpu"), name="t", host_post=True)
    device = SamSegmenter(sam, torch.device("cpu"), name="t", host_post=False)
    a = host.predict_boxes(host.encode(images)[0], boxes)
    b = device.predict_boxes(device.encode(images)[0], boxes)
    assert np.array_equal(a.masks, b.masks) and np.allclose(a.stability, b.stability)
    logits = torch.randn(6, 32, 32) * 3
    logits[0] = -10  # empty at the low threshold: amg divides 0 by 0
    amg = calculate_stability_score(logits, 0.0, STABILITY_OFFSET)
    assert torch.isnan(amg[0])
    inter = (logits > STABILITY_OFFSET).flatten(1).sum(1).float()
    union = (logits > -STABILITY_OFFSET).flatten(1).sum(1).float()
    assert torch.allclose(amg[1:], inter[1:] / union[1:])
