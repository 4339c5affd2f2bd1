"""The research's random-forest consistency regressor, reproduced.

The research fitted a random forest that predicts a box's consistency score (the std of SAM's best score over
its K perturbed boxes) from the perturbed boxes and their scores. Here: features = the K perturbed boxes of a
segment (XYXY, px) followed by their K best scores, target = ``consistency_std``, a seeded train/test split and
the held-out R². Because the target is the standard deviation of K of the features, a high R² is expected; the
section shows how much of it the forest recovers.

At archive scale the forest trains on a seeded sample of at most :data:`MAX_ROWS` segments (drawn in the database,
:func:`pixelperfect.db.streams.forest_rows`), and the result says so: 200 fully grown trees cost
O(n log n) each, about 2 s on one core for 2,000 segments, and R² settles long before a million.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

from pixelperfect.pipeline.options import PromptKind

#: Fewer usable segments than this and the section reports "not enough data" instead of a number.
MIN_SEGMENTS = 20
#: The most segments the forest sees per run × variant (a seeded sample above it).
MAX_ROWS = 2_000


def forest_features(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from segment rows with ``perturbations`` (``[[x1, y1, x2, y2, score], ...]``) and
    ``consistency_std``: ``X`` is ``(n, 5K)`` float64 (K boxes, then K scores), ``y`` is ``(n,)``. Rows of
    other prompt kinds, other K, or with a missing score are skipped.
    """
    feats, target = [], []
    k = None
    for row in rows:
        pert, std = row.get("perturbations"), row.get("consistency_std")
        if std is None or not pert or row.get("prompt_kind", PromptKind.box) != PromptKind.box:
            continue
        if any(len(p) != 5 or p[4] is None for p in pert):
            continue
        k = k or len(pert)
        if len(pert) != k:
            continue
        arr = np.asarray(pert, np.float64)
        feats.append(np.concatenate([arr[:, :4].ravel(), arr[:, 4]]))
        target.append(float(std))
    if not feats:
        return np.zeros((0, 0)), np.zeros(0)
    return np.asarray(feats), np.asarray(target)


class ForestResult(TypedDict, total=False):
    """The consistency forest of one run × variant (:func:`consistency_forest`); the importances and the held-out
    values only where it was fitted."""

    n: int
    n_total: int
    n_train: int
    n_test: int
    r2: float | None
    note: str | None
    importance_boxes: float
    importance_scores: float
    y_test: list[float]
    y_pred: list[float]


def consistency_forest(
    rows: Sequence[Mapping[str, Any]],
    *,
    test_size: float = 0.25,
    seed: int = 0,
    n_estimators: int = 200,
    total: int | None = None,
) -> ForestResult:
    """Fit and score the regressor. Returns ``n``, ``n_train``, ``n_test``, ``r2`` (held out, ``None`` when there
    are fewer than :data:`MIN_SEGMENTS` usable segments), ``importance_boxes`` / ``importance_scores`` (the
    forest's impurity importances summed per feature group), ``y_test`` and ``y_pred`` (for the figure), and
    ``note`` explaining a missing result or the sample; ``n_total``: the usable segments of the group when ``rows``
    is a sample of them (``total``), else ``n``.
    """
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    X, y = forest_features(rows)
    out: ForestResult = {"n": len(y), "n_train": 0, "n_test": 0, "r2": None, "note": None}
    out["n_total"] = max(total or 0, len(y))
    sampled = f"trained on a seeded sample of {len(y):,} of {total:,} segments" if total and total > len(rows) else None
    out["note"] = sampled
    if len(y) < MIN_SEGMENTS:
        out["note"] = f"{len(y)} segments with K perturbed box scores; at least {MIN_SEGMENTS} are needed"
        return out
    if np.ptp(y) == 0:
        out["note"] = "the consistency std is the same for every segment: nothing to predict"
        return out
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=seed)
    model = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    model.fit(x_train, y_train)
    pred = model.predict(x_test)
    k = X.shape[1] // 5
    importances = model.feature_importances_
    out.update(
        {
            "n_train": len(y_train),
            "n_test": len(y_test),
            "r2": float(r2_score(y_test, pred)),
            "importance_boxes": float(importances[: 4 * k].sum()),
            "importance_scores": float(importances[4 * k :].sum()),
            "y_test": [float(v) for v in y_test],
            "y_pred": [float(v) for v in pred],
        }
    )
    return out
