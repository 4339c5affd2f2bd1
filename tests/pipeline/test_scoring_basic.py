from __future__ import annotations

import numpy as np

from pixelperfect.pipeline.prompts import Jitter, perturb_box, prompt_rng, xywh_to_xyxy
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


def test_boxes_from_mask_keeps_components_above_min_area() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:30, 10:40] = True  # 600 px
    mask[50:55, 50:55] = True  # 25 px: dropped
    mask[60:90, 70:80] = True  # 300 px
    assert boxes_from_mask(mask, min_area=250) == [[10, 10, 40, 30], [70, 60, 80, 90]]
    assert boxes_from_mask(mask, min_area=0)[-1] == [50, 50, 55, 55]
    assert boxes_from_mask(np.zeros((5, 5), bool)) == []


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


def test_perturbations_are_seeded_and_bounded() -> None:
    jitter = Jitter(k=4, shift=5, scale=0.1)
    box = np.array([100.0, 100.0, 200.0, 160.0])
    a = perturb_box(box, jitter, prompt_rng(0, "img.png", 1), 512, 512)
    b = perturb_box(box, jitter, prompt_rng(0, "img.png", 1), 512, 512)
    c = perturb_box(box, jitter, prompt_rng(0, "img.png", 2), 512, 512)
    assert a.shape == (4, 4) and np.array_equal(a, b) and not np.array_equal(a, c)
    centres = (a[:, :2] + a[:, 2:]) / 2
    assert (np.abs(centres - [150, 130]) <= 5.5).all()
    widths = a[:, 2] - a[:, 0]
    assert ((widths >= 100 * 0.9 - 1) & (widths <= 100 * 1.1 + 1)).all()
    edge = perturb_box(np.array([0.0, 0, 20, 20]), jitter, prompt_rng(1, "k", 0), 30, 30)
    assert (edge >= 0).all() and (edge <= 30).all()


def test_xywh_to_xyxy() -> None:
    assert xywh_to_xyxy(264, 152, 213, 379) == [264, 152, 477, 531]
