"""Known answers for the surface metrics, the RSNA challenge metric and the reliability table; stability and
consistency on a fixed-seed tiny SAM give the same numbers twice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixelperfect.pipeline.score.metrics import (
    RSNA_THRESHOLDS,
    expected_calibration_error,
    hd95,
    nsd,
    reliability_bins,
    rsna_image_precision,
    rsna_map,
    surface_distances,
)


def _square(y1: int, x1: int, y2: int, x2: int, size: int = 40) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_identical_masks_have_perfect_surface_scores() -> None:
    a = _square(5, 5, 20, 25)
    assert nsd(a, a, 0.0) == 1.0 and hd95(a, a) == 0.0


def test_concentric_squares_known_answer() -> None:
    # pred: 20x20 square, truth: the same square shrunk by 2 px on every side (16x16).
    pred, truth = _square(10, 10, 30, 30), _square(12, 12, 28, 28)
    d_pt, d_tp = surface_distances(pred, truth)
    # 76 pred boundary pixels: 64 edge pixels 2 px from truth's edge, 8 beside a corner at sqrt(5), 4 corners at
    # sqrt(8); all 60 truth boundary pixels are exactly 2 px from pred's edge.
    assert d_pt.size == 76 and d_tp.size == 60
    assert sorted(np.round(d_pt**2).astype(int).tolist()) == [4] * 64 + [5] * 8 + [8] * 4
    assert np.allclose(d_tp, 2.0)
    # numpy's percentile at 95 % of 76 sorted values sits at index 71.25: between sqrt(5) and sqrt(8)
    assert hd95(pred, truth) == pytest.approx(math.sqrt(5) + 0.25 * (math.sqrt(8) - math.sqrt(5)))
    assert nsd(pred, truth, 2.0) == pytest.approx((64 + 60) / (76 + 60))
    assert nsd(pred, truth, 2.5) == pytest.approx((72 + 60) / 136)
    assert nsd(pred, truth, 3.0) == 1.0
    assert nsd(pred, truth, 1.9) == 0.0


def test_distant_squares_and_empty_masks() -> None:
    a, b = _square(0, 0, 5, 5, 60), _square(0, 30, 5, 35, 60)  # same rows, 30 px apart
    assert nsd(a, b, 5.0) == 0.0
    assert hd95(a, b) == pytest.approx(30.0)  # every boundary pixel's nearest partner is 30 px across
    empty = np.zeros_like(a)
    assert nsd(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert nsd(a, empty) == 0.0 and hd95(a, empty) is None
    with pytest.raises(ValueError, match="tolerance"):
        nsd(a, b, -1.0)


def test_surface_metrics_are_independent_of_image_size() -> None:
    small = (_square(10, 10, 30, 30), _square(12, 12, 28, 28))
    big = [np.pad(m, ((100, 300), (50, 500))) for m in small]
    assert nsd(*big, 2.0) == nsd(*small, 2.0) and hd95(*big) == hd95(*small)
    # masks touching the image border: the border counts as outside, so their top and left edges are boundary and
    # coincide; only pred's three pixels at the far corner lie beyond 2 px (sqrt 5, sqrt 8, sqrt 5)
    edge = (_square(0, 0, 20, 20), _square(0, 0, 18, 18))
    assert nsd(*edge, 2.0) == pytest.approx((76 - 3 + 68) / (76 + 68))


def test_rsna_hand_worked_example() -> None:
    assert RSNA_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
    # image A: two truths; a perfect hit, a box with IoU 100/150 = 0.667, and a false positive.
    truth_a = [[0, 0, 10, 10], [20, 20, 30, 30]]
    pred_a = [[0, 0, 10, 10], [20, 20, 30, 35], [50, 50, 60, 60]]
    # t = 0.40 .. 0.65 (6 thresholds): TP 2, FP 1, FN 0 -> 2/3; t = 0.70, 0.75: TP 1, FP 2, FN 1 -> 1/4
    expected_a = (6 * (2 / 3) + 2 * (1 / 4)) / 8
    assert expected_a == pytest.approx(0.5625)
    assert rsna_image_precision(truth_a, pred_a, [0.9, 0.8, 0.3]) == pytest.approx(expected_a)
    # image B: no truth, something predicted -> 0; image C: nothing either way -> not counted; D: missed -> 0
    assert rsna_image_precision([], [[0, 0, 5, 5]], [0.5]) == 0.0
    assert rsna_image_precision([], [], []) is None
    assert rsna_image_precision([[0, 0, 5, 5]], [], []) == 0.0
    images = [
        (truth_a, pred_a, [0.9, 0.8, 0.3]),
        ([], [[0, 0, 5, 5]], [0.5]),
        ([], [], []),
        ([[0, 0, 5, 5]], [], []),
    ]
    assert rsna_map(images) == (pytest.approx(0.5625 / 3), 3)
    assert rsna_map([([], [], [])]) == (None, 0)


def test_rsna_boxes_are_taken_in_score_order() -> None:
    truth = [[0, 0, 10, 10], [5, 0, 15, 10]]
    wide = [3, 0, 13, 10]  # IoU 70/130 = 0.54 with the first truth, 80/120 = 0.67 with the second
    exact = [5, 0, 15, 10]  # the second truth exactly (IoU 1/3 with the first)
    # wide first: it takes the second truth, exact is left with IoU 1/3 -> FP; 1/3 at every threshold
    assert rsna_image_precision(truth, [wide, exact], [0.9, 0.1]) == pytest.approx(1 / 3)
    # exact first: it takes the second truth, wide then matches the first while 0.54 >= t (t <= 0.50)
    assert rsna_image_precision(truth, [wide, exact], [0.1, 0.9]) == pytest.approx((3 * 1 + 5 / 3) / 8)
    with pytest.raises(ValueError, match="scores"):
        rsna_image_precision(truth, [wide], [0.1, 0.2])


def test_reliability_bins_known_answer() -> None:
    bins = reliability_bins([0.05, 0.15, 0.95, 1.0, float("nan"), 0.1], [0.1, 0.3, 0.8, 0.6, 0.5, 0.2], n_bins=10)
    assert [b.n for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins[0].score_mean == pytest.approx(0.05) and bins[0].dice_mean == pytest.approx(0.1)
    assert bins[1].score_mean == pytest.approx(0.125) and bins[1].dice_mean == pytest.approx(0.25)  # 0.1 -> [0.1, 0.2)
    assert bins[9].score_mean == pytest.approx(0.975) and bins[9].dice_mean == pytest.approx(0.7)
    assert bins[2].score_mean is None
    # ECE: (1 * 0.05 + 2 * 0.125 + 2 * 0.275) / 5
    assert expected_calibration_error(bins) == pytest.approx((0.05 + 0.25 + 0.55) / 5)
    assert expected_calibration_error(reliability_bins([], [])) is None
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins([0.5], [0.5], n_bins=0)


def test_stability_and_consistency_repeat_on_a_fixed_seed_tiny_sam() -> None:
    import torch

    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import TinyConfig, build_tiny_sam
    from pixelperfect.pipeline.preprocess.variants import parse_variant
    from pixelperfect.pipeline.stages import ImageInput, ProcessSettings, process_images

    rng = np.random.default_rng(0)
    pixels = (rng.random((128, 128)) * 80).astype(np.uint8)
    pixels[40:90, 30:100] += 120
    gt = np.zeros((128, 128), bool)
    gt[40:90, 30:100] = True
    image = ImageInput("img.png", pixels, [[30.0, 40.0, 100.0, 90.0], [5.0, 5.0, 40.0, 30.0]], gt_mask=gt)
    columns = ("score", "stability", "consistency_std", "consistency_iou", "consistency_iou_base", "nsd", "hd95",
               "box_dice")  # fmt: skip

    def once() -> list[tuple[float | None, ...]]:
        torch.manual_seed(11)
        seg = SamSegmenter(build_tiny_sam(TinyConfig(image_size=128)), torch.device("cpu"), name="sam_tiny")
        (result,) = process_images([image], [parse_variant("raw")], seg, ProcessSettings())
        return [tuple(getattr(s, c) for c in columns) for s in result.segments]

    first, second = once(), once()
    assert first == second and len(first) == 2
    assert [row[-1] for row in first] == [1.0, 0.0]  # the first box is the target exactly; the second misses it
    assert all(v is not None for row in first for v in row[:3])
