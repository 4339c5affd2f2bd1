"""The chunked, vectorised RSNA metric gives pipeline.metrics' per-image numbers, image for image."""

from __future__ import annotations

import numpy as np
import pytest

from pixelperfect.evaluation import detection
from pixelperfect.evaluation.detection import THRESHOLDS, chunk_precisions, rsna_map_stream
from pixelperfect.pipeline.score.metrics import RSNA_THRESHOLDS, rsna_image_precision, rsna_map


def _images(n: int, seed: int = 0) -> list[tuple[int, list[list[float]], list[list[float]], list[float]]]:
    rng = np.random.default_rng(seed)

    def boxes(k: int) -> list[list[float]]:
        xy, wh = rng.uniform(0, 200, (k, 2)), rng.uniform(5, 80, (k, 2))
        if k and rng.random() < 0.2:
            wh[0] = 0.0  # a degenerate box
        return np.concatenate([xy, xy + wh], 1).round(0).tolist()

    out = []
    for i in range(n):
        truth, pred = boxes(int(rng.integers(0, 4))), boxes(int(rng.integers(0, 6)))
        if truth and pred and rng.random() < 0.6:  # near and exact hits, so every threshold matters
            x1, y1, x2, y2 = truth[0]
            pred[0] = [x1, y1, x2, y2]
            pred[-1] = [x1 + rng.integers(0, 12), y1 + rng.integers(0, 12), x2, y2 - rng.integers(0, 12)]
        scores = rng.choice([0.5, 0.7, 0.9], len(pred)).tolist()  # ties: the given order decides
        out.append((i, truth, pred, scores))
    return out


def test_chunked_metric_equals_the_per_image_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    assert THRESHOLDS == RSNA_THRESHOLDS
    images = _images(2000)
    expected = [rsna_image_precision(t, p, s) for _, t, p, s in images]
    got = chunk_precisions(images)
    assert [e is None for e in expected] == np.isnan(got).tolist()
    assert np.nanmax(np.abs(np.array([np.nan if e is None else e for e in expected]) - got)) < 1e-12
    assert {0.0, 1.0} < set(got[np.isfinite(got)].round(6)) and len(set(got[np.isfinite(got)].round(6))) > 5
    monkeypatch.setattr(detection, "CHUNK_IMAGES", 7)  # chunk edges change nothing
    value, counted = rsna_map_stream(iter(images))
    ref_value, ref_counted = rsna_map((t, p, s) for _, t, p, s in images)
    assert counted == ref_counted and value == pytest.approx(ref_value, rel=1e-12)
    assert rsna_map_stream(iter([])) == (None, 0)
    assert rsna_map_stream(iter([("x", [], [], [])])) == (None, 0)
    with pytest.raises(ValueError, match="'bad'"):
        chunk_precisions([("bad", [], [[0, 0, 1, 1]], [])])
