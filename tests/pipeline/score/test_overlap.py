"""Scores of masks: component boxes, overlap with the ground truth, consistency under jitter."""

from __future__ import annotations

import cv2
import numpy as np

from pixelperfect.pipeline.score.overlap import (
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


def test_boxes_from_mask_keeps_components_above_min_area() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:30, 10:40] = True  # 600 px
    mask[50:55, 50:55] = True  # 25 px: dropped
    mask[60:90, 70:80] = True  # 300 px
    assert boxes_from_mask(mask, min_area=250) == [[10, 10, 40, 30], [70, 60, 80, 90]]
    assert boxes_from_mask(mask, min_area=0)[-1] == [50, 50, 55, 55]
    assert boxes_from_mask(np.zeros((5, 5), bool)) == []


def test_boxes_from_mask_in_the_bounding_box_equal_the_whole_image_labelling() -> None:
    """The crop to the mask's bounding box changes nothing: random blobs, touching every edge or none, bool or
    0/255 uint8 masks, against components labelled on the whole image."""
    rng = np.random.default_rng(7)

    def whole_image(mask: np.ndarray, min_area: int) -> list[list[int]]:
        n, _, stats, _ = cv2.connectedComponentsWithStats((mask != 0).astype(np.uint8), connectivity=8)
        found = [(int(st[4]), [int(st[0]), int(st[1]), int(st[0] + st[2]), int(st[1] + st[3])]) for st in stats[1:n]]
        return [box for area, box in sorted(found, key=lambda t: -t[0]) if area > min_area]

    for trial in range(40):
        mask = np.zeros((int(rng.integers(20, 200)), int(rng.integers(20, 200))), bool)
        for _ in range(int(rng.integers(1, 6))):
            y, x = int(rng.integers(0, mask.shape[0])), int(rng.integers(0, mask.shape[1]))
            mask[y : y + int(rng.integers(1, 60)), x : x + int(rng.integers(1, 60))] = True
        as_input = mask.astype(np.uint8) * 255 if trial % 2 else mask
        for min_area in (0, 30):
            assert boxes_from_mask(as_input, min_area) == whole_image(mask, min_area)


def test_overlap_metrics_known_answers() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True  # 20
    b[2:6, 0:5] = True  # 20, overlap 10
    assert dice(a, b) == 0.5 and iou(a, b) == 10 / 30
    assert dice(a & False, b & False) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == 50 / 150
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert mask_bbox(a) == [0, 0, 5, 4] and mask_bbox(a & False) is None
    assert fraction_inside(a, [0, 0, 5, 2]) == 0.5
    assert restrict_to_box(b, [0, 0, 10, 3]).sum() == 5


def test_consistency_known_answer() -> None:
    base = np.zeros((10, 10), bool)
    base[0:5, 0:10] = True
    perturbed = np.stack([base, base, ~base])
    out = consistency(base, perturbed, np.array([0.5, 0.7, 0.9]))
    assert np.isclose(out["consistency_std"], np.std([0.5, 0.7, 0.9]))
    assert np.isclose(out["consistency_iou"], (1 + 0 + 0) / 3)
    assert np.isclose(out["consistency_iou_base"], 2 / 3)
    assert consistency(base, perturbed[:0], np.array([]))["consistency_std"] is None


def test_box_dice_is_the_dice_of_the_drawn_box() -> None:
    """From counts, as if the box (rounded, clipped to the image) were drawn as a mask: fractional boxes, boxes
    across the border, empty boxes and empty truths."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        truth = np.zeros((60, 80), bool)
        if rng.random() < 0.9:
            y, x = int(rng.integers(0, 60)), int(rng.integers(0, 80))
            truth[y : y + int(rng.integers(1, 40)), x : x + int(rng.integers(1, 40))] = True
        x1, y1 = rng.uniform(-20, 90), rng.uniform(-20, 70)
        box = [x1, y1, x1 + rng.uniform(0, 50), y1 + rng.uniform(0, 50)]
        inside = restrict_to_box(truth, box)
        drawn = restrict_to_box(np.ones_like(truth), box)
        assert box_dice(box, inside) == dice(drawn, inside), box
    assert box_dice([0, 0, 10, 10], np.zeros((20, 20), bool)) == 0.0
    assert box_dice([5, 5, 5, 9], np.zeros((20, 20), bool)) == 1.0  # empty box, empty truth: as dice()
