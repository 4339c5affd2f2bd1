"""Paired statistics and calibration checked against scipy called directly; the consistency forest."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from pixelperfect.evaluation.forest import MIN_SEGMENTS, consistency_forest, forest_features
from pixelperfect.evaluation.stats import calibration, paired_comparison, spearman


def test_paired_comparison_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(0.05, 0.02, 40)
    b = a - 0.01 + rng.normal(0, 0.01, 40)
    out = paired_comparison(a, b, lower_is_better=True, seed=3)
    d = b - a
    assert out["n"] == 40
    assert out["mean_diff"] == pytest.approx(d.mean()) and out["mean_a"] == pytest.approx(a.mean())
    assert out["fraction_improved"] == pytest.approx(np.mean(d < 0))
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(b, a).pvalue)
    ci = sps.bootstrap(
        (d,), np.mean, n_resamples=2000, confidence_level=0.95, method="percentile", rng=np.random.default_rng(3)
    ).confidence_interval
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert out["ci_low"] < out["mean_diff"] < out["ci_high"] < 0  # a real improvement: the CI excludes 0
    higher = paired_comparison(a, b, lower_is_better=False)
    assert higher["fraction_improved"] == pytest.approx(np.mean(d > 0))


def test_paired_comparison_edge_cases() -> None:
    empty = paired_comparison([], [])
    assert empty["n"] == 0 and empty["mean_diff"] is None and empty["wilcoxon_p"] is None
    same = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean_diff"] == 0 and same["wilcoxon_p"] is None and same["ci_low"] == same["ci_high"] == 0
    assert same["fraction_improved"] == 0
    shift = paired_comparison([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])  # constant difference: no spread to resample
    assert shift["ci_low"] == pytest.approx(0.1) and shift["ci_high"] == pytest.approx(0.1)
    assert shift["wilcoxon_p"] == pytest.approx(sps.wilcoxon([0.2, 0.3, 0.4], [0.1, 0.2, 0.3]).pvalue)
    with pytest.raises(ValueError, match="length"):
        paired_comparison([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([1.0], [1.0], confidence=1.5)


def test_spearman_and_calibration_match_scipy() -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0.5, 1.0, 30)
    dice = np.clip(score - 0.2 + rng.normal(0, 0.1, 30), 0, 1)
    std = 0.1 - 0.05 * dice + rng.normal(0, 0.01, 30)
    expected = sps.spearmanr(score, dice)
    got = spearman(score, dice)
    assert got["rho"] == pytest.approx(expected.statistic) and got["p"] == pytest.approx(expected.pvalue)
    assert got["n"] == 30
    assert spearman([1, 2], [1, 2])["rho"] is None and spearman([1, 1, 1], [1, 2, 3])["rho"] is None
    assert spearman([1, np.nan, 3, 4], [1, 2, 3, 5])["n"] == 3

    # the predictors then the Dice per segment with a Dice (NaN: predictor missing), and bins as the database gives
    cols = np.column_stack([score, np.full(30, np.nan), std, np.full(30, np.nan), dice])
    from pixelperfect.pipeline.score.metrics import expected_calibration_error, reliability_bins

    table = reliability_bins(score, dice)
    bins = [{"lo": b.lo, "hi": b.hi, "n": b.n, "score_mean": b.score_mean, "dice_mean": b.dice_mean} for b in table]
    cal = calibration(bins, cols)
    assert cal["n"] == 30
    assert cal["spearman"]["score"]["rho"] == pytest.approx(expected.statistic)
    assert cal["spearman"]["consistency_std"]["rho"] == pytest.approx(sps.spearmanr(std, dice).statistic)
    assert cal["spearman"]["consistency_std"]["rho"] < 0  # built so: more consistent goes with better Dice
    assert cal["spearman"]["stability"]["rho"] is None
    assert sum(b["n"] for b in cal["reliability"]) == 30 and cal["ece"] == pytest.approx(
        expected_calibration_error(table)
    )
    assert calibration([{**b, "n": 0} for b in bins], cols[:0])["ece"] is None


def test_bootstrap_subsamples_above_its_cap_and_says_so() -> None:
    from pixelperfect.evaluation.stats import BOOTSTRAP_MAX_PAIRS

    rng = np.random.default_rng(1)
    n = BOOTSTRAP_MAX_PAIRS * 3
    a = rng.normal(0.5, 0.1, n).astype(np.float32)
    b = (a + 0.01 + rng.normal(0, 0.05, n)).astype(np.float32)
    out = paired_comparison(a, b)
    assert out["n"] == n and out["bootstrap_n"] == BOOTSTRAP_MAX_PAIRS
    assert out["mean_diff"] == pytest.approx(float(np.mean(b.astype(np.float64) - a)))  # all pairs
    # a CI of 10,000 resampled pairs: about 0.002 wide around the true shift of 0.01
    assert out["ci_low"] < out["ci_high"] and out["ci_low"] > 0.006 and out["ci_high"] < 0.014
    assert 0.001 < out["ci_high"] - out["ci_low"] < 0.004
    assert paired_comparison(a, b) == out  # seeded
    small = paired_comparison(a[:100], b[:100])
    assert small["bootstrap_n"] == 100


def _rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        box = rng.uniform(0, 200, 2)
        scores = rng.uniform(0.6, 1.0) + rng.normal(0, rng.uniform(0.001, 0.08), 4)
        pert = [[*(box + rng.integers(-5, 6, 2)), *(box + 80 + rng.integers(-5, 6, 2)), float(s)] for s in scores]
        rows.append({"prompt_kind": "box", "perturbations": pert, "consistency_std": float(np.std(scores))})
    return rows


def test_consistency_forest_recovers_the_std_from_the_scores() -> None:
    rows = _rows(200)
    X, y = forest_features([*rows, {"prompt_kind": "auto", "perturbations": [[1, 2, 0.5]], "consistency_std": 0.1}])
    assert X.shape == (200, 20) and y.shape == (200,)
    assert X[0, 16:].tolist() == [p[4] for p in rows[0]["perturbations"]]  # type: ignore[union-attr]
    out = consistency_forest(rows)
    assert out["n_train"] == 150 and out["n_test"] == 50
    # the target is a function of the score features alone: the forest beats the mean and leans on the scores
    # (R² grows with data: 0.15 at 150 training segments here, 0.70 at 600)
    assert out["r2"] > 0.05 and out["importance_scores"] > out["importance_boxes"]
    assert consistency_forest(rows)["r2"] == out["r2"]  # seeded
    few = consistency_forest(rows[: MIN_SEGMENTS - 1])
    assert few["r2"] is None and "at least" in few["note"]


def test_the_results_have_exactly_their_declared_keys() -> None:
    """What the report writes is what its types declare (``report.json`` readers rely on the keys)."""
    from typing import get_type_hints

    from pixelperfect.evaluation.stats import Calibration, PairedComparison, Spearman, calibration, spearman

    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    assert set(paired_comparison(a, b)) == set(get_type_hints(PairedComparison))
    assert set(paired_comparison([], [])) == set(get_type_hints(PairedComparison))
    assert set(spearman(a, b)) == set(get_type_hints(Spearman))
    cal = calibration([], np.column_stack([a, a, a, a, b]))
    assert set(cal) == set(get_type_hints(Calibration))
