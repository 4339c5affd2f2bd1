"""Our Dice, IoU, NSD and HD95 against MONAI's reference implementations (test-only dependency ``monai``).

300 seeded random mask pairs (smoothed noise thresholded: irregular shapes with holes, several components, some
touching the image edge) at random anisotropic pixel spacings (row and col each in 0.1..1.2 mm, ratio up to 12).
Tolerances: Dice and IoU to 1e-6 (MONAI computes in float32); HD95 to 1e-4 relative (MONAI's distances are
float32); NSD exactly equal counts except where a distance lies within float32 rounding of the tolerance, which the
random spacings and tolerances make vanishingly rare (asserted: at most 1 case in 300 differs, by < 0.01).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from pixelperfect.pipeline.score.metrics import hd95, nsd
from pixelperfect.pipeline.score.overlap import dice, iou

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

N_CASES = 300
# MONAI's own deprecation notice about an argument it passes to itself
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random irregular mask: Gaussian-smoothed noise above a random level (never empty)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.5, 5.0))
    mask = field > np.quantile(field, rng.uniform(0.55, 0.95))
    return mask


def _cases() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float], float]]:
    rng = np.random.default_rng(2026)
    out = []
    for _ in range(N_CASES):
        shape = (int(rng.integers(24, 72)), int(rng.integers(24, 72)))
        truth = _blob(rng, shape)
        if rng.random() < 0.5:  # a prediction near the truth: the truth dilated/eroded and partly shifted
            pred = ndimage.binary_dilation(truth, iterations=int(rng.integers(0, 3)))
            pred = np.roll(pred, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
            pred |= _blob(rng, shape) & (rng.random(shape) < 0.02)
            if not pred.any():
                pred = truth.copy()
        else:
            pred = _blob(rng, shape)
        spacing = (float(rng.uniform(0.1, 1.2)), float(rng.uniform(0.1, 1.2)))
        tolerance = float(rng.uniform(0.3, 4.0))
        out.append((pred, truth, spacing, tolerance))
    return out


def _t(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask[None, None].astype(np.float32))


def test_dice_iou_nsd_hd95_match_monai_on_random_masks_with_anisotropic_spacing() -> None:
    nsd_off: list[float] = []
    for pred, truth, spacing, tol in _cases():
        p, t = _t(pred), _t(truth)
        assert dice(pred, truth) == pytest.approx(float(monai_metrics.compute_dice(p, t)), abs=1e-6)
        assert iou(pred, truth) == pytest.approx(float(monai_metrics.compute_iou(p, t)), abs=1e-6)
        ref_hd = float(monai_metrics.compute_hausdorff_distance(p, t, percentile=95, spacing=list(spacing)))
        ours_hd = hd95(pred, truth, spacing)
        assert ours_hd is not None and ours_hd == pytest.approx(ref_hd, rel=1e-4, abs=1e-5)
        ref_nsd = float(monai_metrics.compute_surface_dice(p, t, [tol], spacing=list(spacing)))
        ours_nsd = nsd(pred, truth, tol, spacing)
        assert ours_nsd is not None
        if abs(ours_nsd - ref_nsd) > 1e-6:
            nsd_off.append(abs(ours_nsd - ref_nsd))
    assert len(nsd_off) <= 1 and all(d < 0.01 for d in nsd_off), nsd_off


def test_spacing_changes_the_answer_as_monai_does() -> None:
    """Millimetres are not pixels times a scalar: the same pair at (0.2, 1.0) mm and (1.0, 0.2) mm differs."""
    truth = np.zeros((40, 40), bool)
    truth[10:30, 12:20] = True
    pred = np.zeros_like(truth)
    pred[12:32, 12:24] = True  # 2 rows lower, 4 columns wider
    for spacing in ((0.2, 1.0), (1.0, 0.2)):
        ref = float(monai_metrics.compute_hausdorff_distance(_t(pred), _t(truth), percentile=95, spacing=list(spacing)))
        assert hd95(pred, truth, spacing) == pytest.approx(ref, rel=1e-5)
    # columns 1.0 mm apart: the 4-column widening is 4 mm and dominates; rows 1.0 mm apart: the 2-row shift (2 mm)
    # and the widening (0.8 mm) mix along the boundary, so the 95th percentile is just above 2 mm
    assert hd95(pred, truth, (0.2, 1.0)) == pytest.approx(4.0)
    assert 2.0 < hd95(pred, truth, (1.0, 0.2)) < 2.1  # type: ignore[operator]
    assert nsd(pred, truth, 1.0, (0.2, 1.0)) < nsd(pred, truth, 1.0, (1.0, 0.2))  # type: ignore[operator]


def test_empty_masks_are_defined_where_monai_gives_nan_or_inf() -> None:
    empty, full = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    full[5:10, 5:10] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks
        ref_both = float(monai_metrics.compute_surface_dice(_t(empty), _t(empty), [1.0]))
        ref_one = float(monai_metrics.compute_surface_dice(_t(full), _t(empty), [1.0]))
        ref_hd_one = float(monai_metrics.compute_hausdorff_distance(_t(full), _t(empty), percentile=95))
    assert math.isnan(ref_both) and nsd(empty, empty, 1.0, (0.5, 0.5)) == 1.0  # ours: nothing to miss
    assert ref_one == 0.0 and nsd(full, empty, 1.0, (0.5, 0.5)) == 0.0 and nsd(empty, full, 1.0) == 0.0
    assert not math.isfinite(ref_hd_one) and hd95(full, empty, (0.5, 0.5)) is None and hd95(empty, full) is None
    assert hd95(empty, empty, (0.5, 0.5)) == 0.0


@pytest.mark.parametrize("bad", [(0.0, 1.0), (-0.5, 0.5), (float("nan"), 1.0), (1.0,), (1.0, 2.0, 3.0)])
def test_bad_spacing_is_refused_by_name(bad: tuple[float, ...]) -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:6, 2:6] = True
    with pytest.raises(ValueError, match="pixel spacing"):
        hd95(mask, mask, bad)
