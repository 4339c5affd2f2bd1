"""Statistics of the evaluation: paired comparisons, calibration (Spearman, reliability bins).

Inputs are arrays of floats (streamed by :mod:`pixelperfect.db.streams`) and reliability bins (grouped by
:func:`pixelperfect.db.queries.reliability_bins`); outputs are JSON-ready dicts with ``None`` where a statistic is
undefined (too few values, no variation). Above :data:`BOOTSTRAP_MAX_PAIRS` pairs the bootstrap resamples a seeded
subsample and says how large (``bootstrap_n``); every other number uses all pairs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
from scipy import stats

#: Predictors whose agreement with the real Dice the calibration section measures.
PREDICTORS: tuple[str, ...] = ("score", "stability", "consistency_std", "consistency_iou")
BOOTSTRAP_RESAMPLES = 2000
#: Above this many pairs the bootstrap CI resamples a seeded subsample of this size (means, Wilcoxon and the
#: share improved still use every pair): 2,000 resamples of 10,000 pairs take about 0.3 s, and a CI from 10,000
#: of n pairs is about sqrt(n / 10,000) times wider than one from all of them: wider, never narrower.
BOOTSTRAP_MAX_PAIRS = 10_000
#: Resampled values held at once by the bootstrap (``batch`` × n int64 indices and float64 values): 2 M, 32 MB.
_BOOTSTRAP_VALUES = 2_000_000


class PairedComparison(TypedDict):
    """A paired comparison of ``b`` against ``a`` as ``report.json`` carries it (:func:`paired_comparison`)."""

    n: int
    sample_n: int
    mean_a: float | None
    mean_b: float | None
    mean_diff: float | None
    fraction_improved: float | None
    wilcoxon_p: float | None
    ci_low: float | None
    ci_high: float | None
    lower_is_better: bool
    bootstrap_n: int


class Spearman(TypedDict):
    """A Spearman rank correlation over ``n`` finite pairs (``None`` where undefined)."""

    rho: float | None
    p: float | None
    n: int


class Calibration(TypedDict):
    """One run × variant's calibration (:func:`calibration`)."""

    n: int
    spearman: dict[str, Spearman]
    reliability: list[dict[str, Any]]
    ece: float | None


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    lower_is_better: bool = False,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    exact: Mapping[str, Any] | None = None,
) -> PairedComparison:
    """Compare paired measurements ``b`` against ``a`` (same prompts, two variants or two runs).

    ``exact``: when ``a``/``b`` are a seeded subsample of more pairs
    (:func:`pixelperfect.evaluation.sampled.capped_pairs`), the exact sums over all of them: ``n``, the means and
    the share improved come from those, every other number from the subsample, whose size is ``sample_n``
    (``sample_n == n`` when nothing was sampled).

    Returns ``n``, ``mean_a``, ``mean_b``, ``mean_diff`` (mean of ``b - a``), ``fraction_improved`` (share of pairs
    where ``b`` is strictly better: lower when ``lower_is_better``), ``wilcoxon_p`` (two-sided Wilcoxon signed-rank
    test of ``b - a``, scipy's defaults: zero differences dropped) and ``ci_low``/``ci_high`` (percentile bootstrap
    CI of the mean difference, ``n_resamples`` resamples seeded by ``seed``; over a seeded subsample of
    :data:`BOOTSTRAP_MAX_PAIRS` pairs when there are more, ``bootstrap_n`` says how many were resampled).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100, got {n_resamples}")
    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    n = int(x.size)
    out: PairedComparison = {
        "n": n if exact is None else int(exact["n"]),
        "sample_n": n,
        "mean_a": None,
        "mean_b": None,
        "mean_diff": None,
        "fraction_improved": None,
        "wilcoxon_p": None,
        "ci_low": None,
        "ci_high": None,
        "lower_is_better": lower_is_better,
        "bootstrap_n": 0,
    }
    if n == 0:
        return out
    d = y - x
    improved = d < 0 if lower_is_better else d > 0
    out.update(
        {
            "mean_a": float(x.mean()),
            "mean_b": float(y.mean()),
            "mean_diff": float(d.mean()),
            "fraction_improved": float(improved.mean()),
        }
    )
    if exact is not None and exact["n"]:
        total = exact["n"]
        out.update(
            {
                "mean_a": exact["sum_a"] / total,
                "mean_b": exact["sum_b"] / total,
                "mean_diff": exact["sum_diff"] / total,
                "fraction_improved": (exact["n_down"] if lower_is_better else exact["n_up"]) / total,
            }
        )
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small samples: scipy warns about the normal approximation
            p = float(stats.wilcoxon(y, x).pvalue)
        out["wilcoxon_p"] = p if np.isfinite(p) else None
    if n >= 2 and np.ptp(d) > 0:
        rng = np.random.default_rng(seed)
        sample = d
        if n > BOOTSTRAP_MAX_PAIRS:
            sample = d[np.sort(np.random.default_rng(seed).choice(n, BOOTSTRAP_MAX_PAIRS, replace=False))]
        res = stats.bootstrap(
            (sample,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=rng,
            batch=max(1, _BOOTSTRAP_VALUES // sample.size),  # the same draws as one batch, in bounded memory
        )
        out.update(
            {
                "ci_low": float(res.confidence_interval.low),
                "ci_high": float(res.confidence_interval.high),
                "bootstrap_n": int(sample.size),
            }
        )
    elif n >= 1:
        out.update({"ci_low": float(d.mean()), "ci_high": float(d.mean())})  # no variation: the CI is the point
    return out


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> Spearman:
    """Spearman rank correlation over the pairs where both values are finite: ``{"rho", "p", "n"}``."""
    a, b = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"rho": None, "p": None, "n": n}
    res = stats.spearmanr(a, b)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def expected_calibration_error(bins: Sequence[Mapping[str, Any]], target: str = "dice") -> float | None:
    """Count-weighted mean of ``|score_mean - <target>_mean|`` over non-empty bins (``None`` if all are empty)."""
    total = sum(b["n"] for b in bins)
    if total == 0:
        return None
    return float(sum(b["n"] * abs(b["score_mean"] - b[f"{target}_mean"]) for b in bins if b["n"]) / total)


def calibration(
    bins: Sequence[Mapping[str, Any]],
    columns: np.ndarray,
    *,
    predictors: Sequence[str] = PREDICTORS,
    n_target: int | None = None,
    target: str = "dice",
) -> Calibration:
    """Calibration of one run × variant's segments against the real ``target`` (Dice).

    ``bins``: the reliability table (:func:`pixelperfect.db.queries.reliability_bins`); ``columns``: ``(n, P + 1)``
    float64, the ``predictors`` then the target per segment with a target (NaN where a predictor is missing);
    ``n_target``: how many segments have a target (default: the rows of ``columns``).
    ``spearman``: per predictor, the Spearman correlation with the target (a low consistency std should go with a
    high Dice, so a *negative* rho is the good sign there). ``reliability``: predicted-IoU bins -> mean score and
    mean Dice; ``ece``: the count-weighted mean gap between them.
    """
    data = np.asarray(columns, np.float64).reshape(-1, len(predictors) + 1)
    truth = data[:, -1]
    return {
        "n": int(np.isfinite(truth).sum()) if n_target is None else int(n_target),
        "spearman": {p: spearman(data[:, i], truth) for i, p in enumerate(predictors)},
        "reliability": [dict(b) for b in bins],
        "ece": expected_calibration_error(bins, target),
    }
