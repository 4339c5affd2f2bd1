"""The aggregate evaluation queries on SQLite and PostgreSQL, against numbers computed by hand / numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixelperfect.db import queries, repo, streams
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.session import session_scope

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'q.db'}"
    return str(request.getfixturevalue("pg_url"))


def _run(name: str, model: str, variants: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "source_url": "file:///src",
        "store_url": "file:///out",
        "model": model,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "variants": [{"name": v, "spec": "identity", "hash": "x"} for v in variants],
        "prompt_mode": "boxes",
        "settings": {"annotations": True},
        "code_version": "0",
        "config_hash": name,
        **extra,
    }


KEYS = ["a.png", "b.png", "c.png", "d.png"]
# run A, per (key, variant, prompt): score, consistency_std, dice
SCORE = {"raw": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], "clahe": [0.95, 0.85, 0.6, 0.65, 0.55, 0.45, 0.2, 0.1]}
STD = {
    "raw": [0.02, 0.03, 0.01, 0.05, 0.04, 0.02, 0.06, 0.01],
    "clahe": [0.01, 0.02, 0.02, 0.03, 0.02, 0.02, 0.05, 0.0],
}
DICE = {"raw": [0.8, 0.7, 0.9, 0.3, None, 0.5, 0.6, 0.2], "clahe": [0.85, 0.6, 0.9, 0.4, None, 0.55, 0.7, 0.1]}


def _segment(run_id: int, image_id: int, variant: str, p: int, i: int, *, model_scores: bool = True) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "image_id": image_id,
        "variant": variant,
        "prompt_index": p,
        "prompt_kind": "box",
        "prompt": [10.0 * p, 0.0, 10.0 * p + 20, 20.0],
        "score": SCORE[variant][i] if model_scores else None,
        "stability": 0.5 if model_scores else None,
        "chosen": 0 if model_scores else int(i % 3 == 0),  # GrabCut: segments 0, 3 and 6 are box fallbacks
        "consistency_std": STD[variant][i] if model_scores else None,
        "consistency_iou": 0.9,
        "dice": DICE[variant][i],
        "box_dice": None if DICE[variant][i] is None else 0.6,
        "iou": None,
        "mask_boxes": [[10 * p, 0, 10 * p + 20, 20]],
        "perturbations": [[10.0 * p + j, 0.0, 10.0 * p + 20, 20.0, 0.5] for j in range(4)] if model_scores else None,
        "mask_key": f"file:///out/{variant}/{i}.png",
    }


def _populate(url: str) -> dict[str, int]:
    upgrade(url)
    with session_scope(url) as s:
        a = repo.create_run(s, name="A", fields=_run("A", "sam_tiny", ["raw", "clahe"])).id
        b = repo.create_run(s, name="B", fields=_run("B", "grabcut", ["raw"])).id
        for run_id in (a, b):
            repo.add_images(s, run_id=run_id, keys=[*KEYS, "bad.png", "gone.png", "later.png"])
        repo.add_annotations(s, run_id=a, boxes={"a.png": [[0, 0, 20, 20]], "b.png": [[100, 100, 120, 120]]})
        for run_id, variants in ((a, ["raw", "clahe"]), (b, ["raw"])):
            images = repo.images_by_key(s, run_id=run_id, keys=[*KEYS, "bad.png", "gone.png"])
            for k, key in enumerate(KEYS):
                segs = [
                    _segment(run_id, images[key].id, v, p, 2 * k + p, model_scores=run_id == a)
                    for v in variants
                    for p in range(2)
                ]
                repo.mark_done(s, image_id=images[key].id, segments=segs, fields={})
            repo.mark_failed(s, image_id=images["bad.png"].id, reason="truncated", error="x")
            repo.mark_failed(s, image_id=images["gone.png"].id, reason="missing", error="y")
    return {"A": a, "B": b}


def test_summaries_failures_pairs_and_ranks(db_url: str) -> None:
    ids = _populate(db_url)
    with session_scope(db_url) as s:
        assert queries.run_ids_by_name(s, names=["B", "A"]) == {"B": ids["B"], "A": ids["A"]}
        with pytest.raises(LookupError, match="'nope'"):
            queries.run_ids_by_name(s, names=["A", "nope"])

        summary = queries.metric_summary(s, run_ids=[ids["A"], ids["B"]])
        assert [(r["run"], r["model"], r["variant"]) for r in summary] == [
            ("A", "sam_tiny", "clahe"),
            ("A", "sam_tiny", "raw"),
            ("B", "grabcut", "raw"),
        ]
        a_raw = summary[1]
        assert a_raw["n"] == 8 and a_raw["dice_n"] == 7 and a_raw["iou_n"] == 0
        for metric, values in (("score", SCORE["raw"]), ("consistency_std", STD["raw"]), ("dice", DICE["raw"])):
            arr = np.array([v for v in values if v is not None])
            assert a_raw[f"{metric}_mean"] == pytest.approx(arr.mean())
            assert a_raw[f"{metric}_median"] == pytest.approx(np.median(arr))
            assert a_raw[f"{metric}_p10"] == pytest.approx(np.percentile(arr, 10))
            assert a_raw[f"{metric}_p90"] == pytest.approx(np.percentile(arr, 90))
        assert a_raw["iou_mean"] is None and a_raw["iou_median"] is None
        b_raw = summary[2]
        assert b_raw["score_mean"] is None and b_raw["score_n"] == 0 and b_raw["dice_mean"] == a_raw["dice_mean"]
        assert a_raw["box_fallbacks"] is None and b_raw["box_fallbacks"] == 3

        legacy = queries.variant_summary(s, run_ids=[ids["A"], ids["B"]])
        assert {(r["name"], r["variant"]): r["images"] for r in legacy} == {("A", "raw"): 4, ("A", "clahe"): 4,
                                                                          ("B", "raw"): 4}  # fmt: skip
        assert all(r["box_dice_mean"] == pytest.approx(0.6) for r in legacy)
        assert {(r["name"], r["variant"]): r["box_fallbacks"] for r in legacy} == {
            ("A", "raw"): None, ("A", "clahe"): None, ("B", "raw"): 3}  # fmt: skip

        failures = queries.failure_summary(s, run_ids=[ids["A"], ids["B"]])
        assert failures == [
            {"run": "A", "reason": "missing", "n": 1},
            {"run": "A", "reason": "truncated", "n": 1},
            {"run": "B", "reason": "missing", "n": 1},
            {"run": "B", "reason": "truncated", "n": 1},
        ]

        va, vb = streams.paired_arrays(s, a=(ids["A"], "raw"), b=(ids["A"], "clahe"), metric="dice")
        expected = [(DICE["raw"][i], DICE["clahe"][i]) for i in range(8) if DICE["raw"][i] is not None]
        assert va.dtype == np.float32 and vb.dtype == np.float32  # two columns, in key then prompt order
        assert va.tolist() == pytest.approx([x for x, _ in expected]) and vb.tolist() == pytest.approx(
            [y for _, y in expected]
        )
        across = streams.paired_arrays(s, a=(ids["A"], "raw"), b=(ids["B"], "raw"), metric="dice")
        assert len(across[0]) == 7 and across[0].tolist() == pytest.approx(across[1].tolist())
        assert len(streams.paired_arrays(s, a=(ids["A"], "raw"), b=(ids["B"], "raw"), metric="score")[0]) == 0
        with pytest.raises(ValueError, match="unknown metric"):
            streams.paired_arrays(s, a=(ids["A"], "raw"), b=(ids["B"], "raw"), metric="drop table")
        box, dice = streams.own_pairs(s, run_id=ids["A"], variant="raw", a="box_dice", b="dice")
        assert box.tolist() == pytest.approx([0.6] * 7) and dice.tolist() == pytest.approx([x for x, _ in expected])

        # reliability bins in SQL = pipeline.metrics' numpy bins on the same (score, Dice) pairs
        from pixelperfect.pipeline.score.metrics import reliability_bins

        pairs = [(sc, d) for sc, d in zip(SCORE["raw"], DICE["raw"], strict=True) if d is not None]
        ref = reliability_bins([p[0] for p in pairs], [p[1] for p in pairs])
        got = queries.reliability_bins(s, run_id=ids["A"], variant="raw")
        assert [(b["lo"], b["hi"], b["n"]) for b in got] == [(r.lo, r.hi, r.n) for r in ref]
        for b, r in zip(got, ref, strict=True):
            assert b["score_mean"] == pytest.approx(r.score_mean) and b["dice_mean"] == pytest.approx(r.dice_mean)
        assert sum(b["n"] for b in queries.reliability_bins(s, run_id=ids["B"], variant="raw")) == 0  # no score

        cols = streams.metric_columns(s, run_id=ids["A"], variant="raw", metrics=["score", "iou", "dice"],
                                      required="dice")  # fmt: skip
        assert cols.shape == (7, 3) and np.isnan(cols[:, 1]).all()
        assert sorted(cols[:, 2].tolist()) == pytest.approx(sorted(x for x, _ in expected))

        progress = queries.run_progress(s, run_id=ids["A"])
        assert progress["images"] == {"queued": 1, "done": 4, "failed": 2} and progress["segments"] == 16
        assert progress["failures"] == {"truncated": 1, "missing": 1} and progress["finished"] == 6
        assert progress["first"] is not None and progress["last"] >= progress["first"]

        worst = queries.ranked_cases(s, run_ids=[ids["A"]], metric="dice", n=2)
        assert [(c["key"], c["variant"], c["prompt_index"], c["value"]) for c in worst] == [
            ("d.png", "clahe", 1, pytest.approx(0.1)),
            ("d.png", "raw", 1, pytest.approx(0.2)),
        ]
        assert worst[0]["mask_key"] == "file:///out/clahe/7.png" and worst[0]["source_url"] == "file:///src"
        best_std = queries.ranked_cases(s, run_ids=[ids["A"]], metric="consistency_std", n=1, worst=False)
        assert best_std[0]["value"] == pytest.approx(0.0) and best_std[0]["key"] == "d.png"
        worst_std = queries.ranked_cases(s, run_ids=[ids["A"]], metric="consistency_std", n=1, worst=True)
        assert worst_std[0]["value"] == pytest.approx(0.06)

        rows, total = streams.forest_rows(s, run_id=ids["A"], variant="raw", cap=100)
        assert total == 8 and len(rows) == 8 and set(rows[0]) == {"prompt_kind", "perturbations", "consistency_std"}
        sample, total = streams.forest_rows(s, run_id=ids["A"], variant="raw", cap=3)
        assert total == 8 and len(sample) <= 3  # a seeded sample, at most the cap
        assert streams.forest_rows(s, run_id=ids["A"], variant="raw", cap=3) == (sample, total)


def test_detection_inputs_and_points(db_url: str) -> None:
    ids = _populate(db_url)
    with session_scope(db_url) as s:
        stream = list(streams.detection_stream(s, run_id=ids["A"], variant="raw"))
        assert [k for k, *_ in stream] == KEYS  # done images only, in key order
        inputs = {k: (t, p, sc) for k, t, p, sc in stream}
        truth, pred, scores = inputs["a.png"]
        assert truth == [[0, 0, 20, 20]] and pred == [[0, 0, 20, 20], [10, 0, 30, 20]]
        assert scores == [pytest.approx(0.9), pytest.approx(0.8)]
        assert inputs["c.png"][0] == []
        b_inputs = list(streams.detection_stream(s, run_id=ids["B"], variant="raw"))
        assert all(sc == [1.0, 1.0] for *_, sc in b_inputs)  # GrabCut: no score, ranked as given

        points = {"a.png": [[5.0, 6.0, 1.0], [7.0, 8.0, 0.0]], "b.png": [[1.0, 2.0, 1.0]]}
        assert repo.add_points(s, run_id=ids["A"], points=points) == 3
        repo.add_points(s, run_id=ids["A"], points=points)  # idempotent
        assert repo.points_for(s, run_id=ids["A"], keys=["a.png", "b.png", "c.png"]) == points
        # the points do not turn into ground-truth boxes, and boxes are untouched by them
        assert repo.boxes_for(s, run_id=ids["A"], keys=["a.png"]) == {"a.png": [[0.0, 0.0, 20.0, 20.0]]}


def test_detection_stream_pairs_boxes_with_their_image_whatever_the_collation(db_url: str) -> None:
    """Keys that a locale collation orders differently from code points (case, punctuation) still meet their own
    ground-truth boxes: both streams are ordered by code point."""
    keys = ["ab.png", "a-b.png", "B.png", "a_c.png", "Ä.png", "a.png"]
    upgrade(db_url)
    with session_scope(db_url) as s:
        rid = repo.create_run(s, name="K", fields=_run("K", "sam_tiny", ["raw"])).id
        repo.add_images(s, run_id=rid, keys=keys)
        boxes = {k: [[float(i), 0.0, float(i) + 10, 10.0]] for i, k in enumerate(keys) if k != "a.png"}
        repo.add_annotations(s, run_id=rid, boxes=boxes)
        images = repo.images_by_key(s, run_id=rid, keys=keys)
        for i, key in enumerate(keys):
            seg = {**_segment(rid, images[key].id, "raw", 0, 0), "mask_boxes": [[float(i), 0.0, float(i) + 10, 10.0]]}
            repo.mark_done(s, image_id=images[key].id, segments=[seg], fields={})
        stream = list(streams.detection_stream(s, run_id=rid, variant="raw"))
    assert [k for k, *_ in stream] == sorted(keys)  # code point order
    for key, truth, pred, _ in stream:
        assert truth == boxes.get(key, []) and pred == [[float(keys.index(key)), 0.0, keys.index(key) + 10.0, 10.0]]
