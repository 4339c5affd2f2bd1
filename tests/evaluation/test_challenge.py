"""The RSNA challenge metric over a run's labelled images: a hand-worked run with labelled negatives, an unlabelled
image and an unfinished one (SQLite and PostgreSQL), and the per-image score against an independent
re-implementation written here on random cases."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from pixelperfect.db import repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.session import session_scope
from pixelperfect.evaluation.challenge import box_agreement, rsna_challenge
from pixelperfect.pipeline.score.metrics import RSNA_THRESHOLDS, rsna_image_precision
from tests.db.test_repo import RUN_FIELDS


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    return str(request.getfixturevalue("pg_url"))


def _segment(run_id: int, image_id: int, p: int, boxes: list[list[float]], score: float) -> dict[str, Any]:
    return {"run_id": run_id, "image_id": image_id, "variant": "raw", "prompt_index": p, "prompt_kind": "auto",
            "prompt": [0.0, 0.0], "score": score, "mask_boxes": boxes}  # fmt: skip


@pytest.mark.integration
def test_hand_worked_run_with_labelled_negatives(db_url: str) -> None:
    upgrade(db_url)
    truth = {"a.png": [[0, 0, 10, 10], [20, 20, 30, 30]], "b.png": [], "c.png": [], "d.png": [[0, 0, 5, 5]],
             "f.png": [[0, 0, 5, 5]]}  # fmt: skip
    predicted = {  # image -> segments: (component boxes, score)
        "a.png": [([[0, 0, 10, 10]], 0.9), ([[20, 20, 30, 35], [50, 50, 60, 60]], 0.8)],
        "b.png": [([[0, 0, 5, 5]], 0.5)],  # a labelled negative with a prediction: 0
        "c.png": [([], 0.4)],  # a labelled negative, nothing predicted (a mask below min_area): skipped
        "d.png": [],  # a missed positive: 0
        "e.png": [([[0, 0, 5, 5]], 0.7)],  # nobody labelled it: does not count
    }
    with session_scope(db_url) as s:
        run = repo.create_run(s, name="auto", fields={**RUN_FIELDS, "prompt_mode": "auto"})
        repo.add_images(s, run_id=run.id, keys=[*predicted, "f.png"])  # f.png stays queued: does not count
        repo.add_annotations(s, run_id=run.id, boxes=truth)
        repo.mark_labelled(s, run_id=run.id, keys=list(truth))
        ids = {k: i.id for k, i in repo.images_by_key(s, run_id=run.id, keys=list(predicted)).items()}
        for key, segs in predicted.items():
            rows = [_segment(run.id, ids[key], p, b, sc) for p, (b, sc) in enumerate(segs)]
            repo.mark_done(s, image_id=ids[key], segments=rows, fields={})
        run_id = run.id
    # a: t = 0.40..0.65 TP 2, FP 1, FN 0 -> 2/3; t = 0.70, 0.75 TP 1, FP 2, FN 1 -> 1/4; mean 0.5625
    a = (6 * (2 / 3) + 2 * (1 / 4)) / 8
    with session_scope(db_url) as s:
        result = rsna_challenge(s, run_id=run_id, variant="raw")
        agreement = box_agreement(s, run_id=run_id, variant="raw")
    assert result == {
        "score": pytest.approx((a + 0 + 0) / 3),
        "images": 3,
        "labelled": 4,
        "negatives": 2,
        "negatives_predicted": 1,
        "skipped": 1,
        "score_positives": pytest.approx(a / 2),
        "positives": 2,
    }
    assert agreement == {"box_agreement": pytest.approx(a / 2), "images": 2}  # images with a box only


def _iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = w * h if w > 0 and h > 0 else 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(truth: list[list[float]], pred: list[list[float]], scores: list[float]) -> float | None:
    """The challenge's evaluation text, written out in plain Python: predictions in descending confidence (ties in
    the given order), each claims the still-unclaimed truth box with the highest IoU if that IoU reaches t."""
    if not truth and not pred:
        return None
    ranked = [pred[i] for i in sorted(range(len(pred)), key=lambda i: -scores[i])]
    total = 0.0
    for t in [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]:
        claimed: set[int] = set()
        tp = 0
        for box in ranked:
            best, best_j = -1.0, -1
            for j, gt in enumerate(truth):
                value = _iou(box, gt)
                if j not in claimed and value >= t and value > best:
                    best, best_j = value, j
            if best_j >= 0:
                claimed.add(best_j)
                tp += 1
        total += tp / (tp + (len(pred) - tp) + (len(truth) - tp))
    return total / 8


def test_image_score_matches_an_independent_reimplementation_on_random_cases() -> None:
    assert RSNA_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
    rng = random.Random(16)

    def box(near: list[float] | None = None) -> list[float]:
        if near is not None:  # a perturbed copy: IoUs spread across the thresholds
            x1, y1, x2, y2 = (v + rng.uniform(-8, 8) for v in near)
            return [min(x1, x2 - 1), min(y1, y2 - 1), max(x2, x1 + 1), max(y2, y1 + 1)]
        x, y = rng.uniform(0, 100), rng.uniform(0, 100)
        return [x, y, x + rng.uniform(5, 40), y + rng.uniform(5, 40)]

    counted = 0
    for _ in range(500):
        truth = [box() for _ in range(rng.randint(0, 3))]
        pred = [box(rng.choice(truth)) if truth and rng.random() < 0.7 else box() for _ in range(rng.randint(0, 4))]
        scores = [rng.choice([0.5, 0.9, rng.random()]) for _ in pred]  # ties included
        ours, ref = rsna_image_precision(truth, pred, scores), _reference(truth, pred, scores)
        assert (ours is None) == (ref is None)
        if ours is not None:
            assert ours == pytest.approx(ref, abs=1e-12)
            counted += 1
    assert counted > 400


@pytest.mark.integration
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streamed_challenge_equals_the_reference_on_random_runs(db_url: str, seed: int) -> None:
    """:func:`detection.challenge_windows` over :func:`windows.labelled_windows` (small windows: several per run)
    gives ``rsna_challenge``'s numbers: labelled negatives, unlabelled and unfinished images, empty components."""
    from pixelperfect.db.windows import labelled_windows
    from pixelperfect.evaluation.detection import challenge_windows

    upgrade(db_url)
    rng = random.Random(seed)

    def box() -> list[float]:
        x, y = rng.choice([0.0, 10.0, rng.uniform(0, 50)]), rng.choice([0.0, 10.0, rng.uniform(0, 50)])
        return [x, y, x + rng.choice([10.0, rng.uniform(3, 30)]), y + rng.choice([10.0, rng.uniform(3, 30)])]

    keys = [f"{i:03d}.png" for i in range(60)]
    truth = {k: [box() for _ in range(rng.choice([0, 0, 1, 2, 3]))] for k in keys if rng.random() < 0.8}
    labelled = [k for k in truth if rng.random() < 0.85]  # some annotated images stay unlabelled
    done = [k for k in keys if rng.random() < 0.9]  # the rest stay queued
    with session_scope(db_url) as s:
        run = repo.create_run(s, name="auto", fields={**RUN_FIELDS, "prompt_mode": "auto"})
        repo.add_images(s, run_id=run.id, keys=keys)
        repo.add_annotations(s, run_id=run.id, boxes={k: b for k, b in truth.items() if b})
        repo.mark_labelled(s, run_id=run.id, keys=labelled)
        ids = {k: i.id for k, i in repo.images_by_key(s, run_id=run.id, keys=done).items()}
        for key in done:
            rows = []
            for variant in ("raw", "clahe"):
                for p in range(rng.choice([0, 1, 2, 3])):
                    boxes = [box() for _ in range(rng.choice([0, 1, 1, 2]))]
                    rows.append({**_segment(run.id, ids[key], p, boxes, rng.choice([0.5, 0.9, rng.random()])),
                                 "variant": variant})  # fmt: skip
            repo.mark_done(s, image_id=ids[key], segments=rows, fields={})
        run_id = run.id
    with session_scope(db_url) as s:
        refs = {v: rsna_challenge(s, run_id=run_id, variant=v) for v in ("raw", "clahe")}
        streamed = challenge_windows(labelled_windows(s, run_id=run_id, variants=["raw", "clahe"], window=7),
                                     ["raw", "clahe"])  # fmt: skip
    for variant, ref in refs.items():
        got = streamed[variant]
        assert ref["images"] > 10 and ref["negatives_predicted"] > 0
        assert {k: v for k, v in got.items() if "score" not in k} == {k: v for k, v in ref.items() if "score" not in k}
        for k in ("score", "score_positives"):
            assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12)
