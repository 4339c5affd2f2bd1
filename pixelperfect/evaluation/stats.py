"""Statistics of the evaluation: paired comparisons, calibration (Spearman, reliability bins).

Inputs are plain sequences of floats (from :mod:`pixelperfect.db.queries`); outputs are JSON-ready dicts with
``None`` where a statistic is undefined (too few values, no variation).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from pixelperfect.pipeline.metrics import expected_calibration_error, reliability_bins

#: Predictors whose agreement with the real Dice the calibration section measures.
PREDICTORS: tuple[str, ...] = ("score", "stability", "consistency_std", "consistency_iou")
BOOTSTRAP_RESAMPLES = 2000


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    lower_is_better: bool = False,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare paired measurements ``b`` against ``a`` (same prompts, two variants or two runs).

    Returns ``n``, ``mean_a``, ``mean_b``, ``mean_diff`` (mean of ``b - a``), ``fraction_improved`` (share of pairs
    where ``b`` is strictly better: lower when ``lower_is_better``), ``wilcoxon_p`` (two-sided Wilcoxon signed-rank
    test of ``b - a``, scipy's defaults: zero differences dropped) and ``ci_low``/``ci_high`` (percentile bootstrap
    CI of the mean difference, ``n_resamples`` resamples seeded by ``seed``).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100, got {n_resamples}")
    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    n = int(x.size)
    out: dict[str, Any] = {
        "n": n,
        "mean_a": None,
        "mean_b": None,
        "mean_diff": None,
        "fraction_improved": None,
        "wilcoxon_p": None,
        "ci_low": None,
        "ci_high": None,
        "lower_is_better": lower_is_better,
    }
    if n == 0:
        return out
    d = y - x
    improved = d < 0 if lower_is_better else d > 0
    out.update(
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        mean_diff=float(d.mean()),
        fraction_improved=float(improved.mean()),
    )
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small samples: scipy warns about the normal approximation
            p = float(stats.wilcoxon(y, x).pvalue)
        out["wilcoxon_p"] = p if np.isfinite(p) else None
    if n >= 2 and np.ptp(d) > 0:
        res = stats.bootstrap(
            (d,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        out.update(ci_low=float(res.confidence_interval.low), ci_high=float(res.confidence_interval.high))
    elif n >= 1:
        out.update(ci_low=float(d.mean()), ci_high=float(d.mean()))  # no variation: the CI is the point
    return out


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Spearman rank correlation over the pairs where both values are finite: ``{"rho", "p", "n"}``."""
    a, b = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"rho": None, "p": None, "n": n}
    res = stats.spearmanr(a, b)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def _floats(rows: Sequence[Mapping[str, Any]], column: str) -> np.ndarray:
    return np.array([np.nan if r.get(column) is None else float(r[column]) for r in rows], np.float64)


def calibration(
    rows: Sequence[Mapping[str, Any]], *, target: str = "dice", predictors: Sequence[str] = PREDICTORS, bins: int = 10
) -> dict[str, Any]:
    """Calibration of one run × variant's segments against the real ``target`` (Dice).

    ``spearman``: per predictor, the Spearman correlation with the target (a low consistency std should go with a
    high Dice, so a *negative* rho is the good sign there). ``reliability``: predicted-IoU bins -> mean score and
    mean Dice; ``ece``: the count-weighted mean gap between them.
    """
    truth = _floats(rows, target)
    table = reliability_bins(_floats(rows, "score"), truth, n_bins=bins)
    return {
        "n": int(np.isfinite(truth).sum()),
        "spearman": {p: spearman(_floats(rows, p), truth) for p in predictors},
        "reliability": [
            {"lo": b.lo, "hi": b.hi, "n": b.n, "score_mean": b.score_mean, "dice_mean": b.dice_mean} for b in table
        ],
        "ece": expected_calibration_error(table),
    }
