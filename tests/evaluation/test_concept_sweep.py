"""The concept runs' threshold sweep on synthetic instances: precision, recall, presence, the chosen threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pixelperfect.evaluation.detection import threshold_sweep, true_positives


def _window() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    labelled = np.array([1.0, 2.0, 3.0, 4.0])  # 1, 2 positives; 3, 4 labelled negatives; 5 not labelled
    truth = np.array([[1, 0, 0, 10, 10], [2, 20, 20, 40, 40], [5, 0, 0, 10, 10]], np.float64)
    pred = np.array([
        [1, 0, 0, 10, 10, 0.9],  # a hit
        [1, 50, 50, 60, 60, 0.3],  # a false positive
        [2, 21, 21, 40, 40, 0.6],  # a hit at IoU 19² / 20² = 0.9025
        [3, 0, 0, 5, 5, 0.4],  # on a negative
        [5, 0, 0, 10, 10, 0.95],  # an unlabelled image: never counts
    ], np.float64)  # fmt: skip
    return labelled, truth, {"raw": pred}


def test_sweep_chooses_the_best_f1_and_records_presence() -> None:
    out = threshold_sweep([_window()], ["raw"], thresholds=(0.25, 0.5, 0.7))["raw"]
    low, mid, high = out["sweep"]
    assert (low["tp"], low["predicted"], low["truth"]) == (2, 4, 2)
    assert low["precision"] == 0.5 and low["recall"] == 1.0 and low["f1"] == pytest.approx(2 / 3)
    assert low["presence_positives"] == 1.0 and low["presence_negatives"] == 0.5
    assert (mid["precision"], mid["recall"], mid["f1"], mid["presence_negatives"]) == (1.0, 1.0, 1.0, 0.0)
    assert (high["precision"], high["recall"]) == (1.0, 0.5) and high["presence_positives"] == 0.5
    assert out["score_threshold"] == 0.5 and out["f1"] == 1.0
    assert out["rsna_score_at_threshold"] == pytest.approx(1.0)  # both positives matched at every IoU threshold
    assert low["rsna_score"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # image 1: TP/(TP+FP+FN) = 1/2; 3 scores 0


def test_ties_take_the_lowest_threshold_and_no_truth_chooses_none() -> None:
    labelled, truth, preds = _window()
    out = threshold_sweep([(labelled, truth, preds)], ["raw"], thresholds=(0.45, 0.5))["raw"]
    assert out["score_threshold"] == 0.45  # same predictions above 0.45 and 0.5: the tie goes low
    none = threshold_sweep([(np.array([3.0]), np.zeros((0, 5)), preds)], ["raw"], thresholds=(0.5,))["raw"]
    assert none["score_threshold"] is None and none["sweep"][0]["recall"] is None


def test_true_positives_are_matched_once() -> None:
    truth = np.array([[1, 0, 0, 10, 10]], np.float64)
    pred = np.array([[1, 0, 0, 10, 10, 0.9], [1, 0, 0, 10, 10, 0.8]], np.float64)  # a duplicate
    assert list(true_positives(truth, pred)) == [1]
