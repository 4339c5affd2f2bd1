"""Automatic and point prompts: grid, jitter, CSV, lung field, filtering and NMS, rows; the submit defaults."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from pixelperfect.cli import app
from pixelperfect.db import repo
from pixelperfect.db.models import Annotation, Run, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitError, SubmitRequest, submit
from pixelperfect.evaluation.collect import collect
from pixelperfect.pipeline.model.grabcut import GrabCutSegmenter
from pixelperfect.pipeline.model.protocol import MaskPrediction
from pixelperfect.pipeline.options import AutoSettings, Jitter
from pixelperfect.pipeline.preprocess.variants import parse_variant
from pixelperfect.pipeline.prompt.auto import _nms, grid_points, lung_field, parse_points_csv, perturb_point
from pixelperfect.pipeline.prompt.boxes import prompt_rng
from pixelperfect.pipeline.stages import ImageInput, ProcessSettings, process_images
from tests.conftest import embedded_settings


class DiscSegmenter:
    """A deterministic stand-in model: every point prompt gives a disc of radius 12 around its first point,
    scored 0.95 inside ``target`` (a box) and 0.5 elsewhere, stability 1."""

    name = "disc"

    def __init__(self, shape: tuple[int, int], target: Sequence[int]) -> None:
        self.shape, self.target = shape, target
        self.calls: list[int] = []

    def encode(self, images: Sequence[np.ndarray]) -> list[Any]:
        return list(images)

    def predict_boxes(self, embedding: Any, boxes: np.ndarray) -> MaskPrediction:  # pragma: no cover - unused
        raise NotImplementedError

    def predict_points(self, embedding: Any, points: np.ndarray, labels: np.ndarray) -> MaskPrediction:
        self.calls.append(len(points))
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]]
        masks, scores = [], []
        x1, y1, x2, y2 = self.target
        for (x, y), *_ in np.asarray(points):
            masks.append((xx - x) ** 2 + (yy - y) ** 2 <= 144)
            scores.append(0.95 if x1 <= x < x2 and y1 <= y < y2 else 0.5)
        n = len(points)
        return MaskPrediction(
            np.array(masks).reshape(n, *self.shape),
            np.array(scores, np.float32).reshape(n, 1),
            np.zeros(n, np.int64),
            np.ones(n, np.float32),
        )


def test_grid_points_are_cell_centres() -> None:
    pts = grid_points(100, 200, 2)
    assert pts.tolist() == [[50, 25], [150, 25], [50, 75], [150, 75]]
    with pytest.raises(ValueError, match="per_side"):
        grid_points(10, 10, 0)


def test_point_jitter_is_seeded_and_clipped() -> None:
    jitter = Jitter(k=4, shift=5)
    a = perturb_point([50, 60], jitter, prompt_rng(0, "k", 0), 100, 100)
    b = perturb_point([50, 60], jitter, prompt_rng(0, "k", 0), 100, 100)
    assert a.shape == (4, 2) and np.array_equal(a, b)
    assert (np.abs(a - [50, 60]) <= 5).all() and (a == np.round(a)).all()
    edge = perturb_point([0, 99], jitter, prompt_rng(1, "k", 0), 100, 100)
    assert (edge >= 0).all() and (edge <= 99).all()


def test_points_csv() -> None:
    text = "key,x,y,label\na.png,10,20,1\na.png,30,40,0\nb,5.5,6,\n"
    assert parse_points_csv(text) == {"a.png": [[10, 20, 1], [30, 40, 0]], "b": [[5.5, 6, 1]]}
    assert parse_points_csv("key,x,y\nc,1,2\n") == {"c": [[1, 2, 1]]}
    with pytest.raises(ValueError, match=r"points.csv:2: label"):
        parse_points_csv("key,x,y,label\na,1,2,7\n")
    with pytest.raises(ValueError, match="header lacks"):
        parse_points_csv("name,x\na,1\n")
    with pytest.raises(ValueError, match="numbers"):
        parse_points_csv("key,x,y\na,one,2\n")


def test_lung_field_covers_the_opacities_of_phantoms(phantom_dir: Path) -> None:
    covered, checked = [], 0
    for image_path in sorted((phantom_dir / "images").glob("*.png"))[:6]:
        pixels = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        truth = cv2.imread(str(phantom_dir / "masks" / image_path.name), cv2.IMREAD_GRAYSCALE) > 0
        lung = lung_field(pixels)
        assert lung.shape == pixels.shape and 0.08 < lung.mean() < 0.5
        assert not lung[:, :10].any() and not lung[:, -10:].any() and not lung[:10].any()  # no air outside the body
        if truth.any():
            checked += 1
            covered.append((truth & lung).sum() / truth.sum())
    assert checked >= 2 and min(covered) > 0.8
    assert lung_field(np.full((64, 64), 128, np.uint8)).all()  # nothing plausible: keep everything


def test_nms_drops_overlapping_masks_keeps_the_better() -> None:
    a = np.zeros((50, 50), bool)
    a[10:30, 10:30] = True
    b = np.roll(a, 2, axis=1)  # IoU 360/440 = 0.82 with a
    c = np.roll(a, 20, axis=0)  # disjoint
    assert _nms([a, b, c], [0.8, 0.9, 0.5], 0.7) == [1, 2]
    assert _nms([a, b, c], [0.8, 0.9, 0.5], 0.9) == [1, 0, 2]


def test_auto_mode_filters_by_score_area_and_lung_field() -> None:
    shape = (128, 128)
    pixels = np.zeros(shape, np.uint8)
    seg = DiscSegmenter(shape, target=(32, 32, 96, 64))
    settings = ProcessSettings(
        prompt_mode="auto",
        min_area=100,
        auto=AutoSettings(points_per_side=8, points_batch=10, lung_only=False, max_masks=5),
    )
    truth = np.zeros(shape, bool)
    truth[30:70, 30:100] = True
    image = ImageInput("a.png", pixels, [[30.0, 30.0, 100.0, 70.0]], gt_mask=truth)
    (result,) = process_images([image], [parse_variant("raw")], seg, settings)
    rows = [vars(s) for s in result.segments]
    # grid centres at 8, 24, ..., 120: inside the target x in {40, 56, 72, 88}, y in {40, 56} -> 8 pass the score
    # filter; NMS at 0.7 keeps all (disc IoU at 16 px spacing is 0.12); max_masks keeps the first 5
    assert len(rows) == 5 and all(r["prompt_kind"] == "auto" for r in rows)
    assert [r["prompt_index"] for r in rows] == list(range(5))
    assert all(32 <= r["prompt"][0] < 96 and 32 <= r["prompt"][1] < 64 for r in rows)
    assert seg.calls[:7] == [10] * 6 + [4]  # 64 grid points in batches of 10, then the jitter round
    assert seg.calls[7] == 5 * (1 + 4)
    for r in rows:
        assert len(r["perturbations"]) == 4 and r["consistency_std"] is not None
        assert r["score"] == pytest.approx(0.95) and r["inside_box"] is None
        assert 0 < r["dice"] < 1 and r["nsd"] is not None and r["hd95"] is not None and r["box_iou"] > 0
    assert len({s.mask_png for s in result.segments}) == 5
    # nothing clears a predicted-IoU threshold of 0.96
    strict = ProcessSettings(prompt_mode="auto", auto=AutoSettings(points_per_side=8, min_score=0.96, lung_only=False))
    (none,) = process_images([image], [parse_variant("raw")], seg, strict)
    assert none.segments == []


def test_auto_mode_lung_field_keeps_masks_inside() -> None:
    shape = (128, 128)
    pixels = np.full(shape, 200, np.uint8)
    pixels[20:110, 20:60] = 30  # one dark "lung" on the left, away from the border
    seg = DiscSegmenter(shape, target=(0, 0, 128, 128))  # every point scores 0.95
    settings = ProcessSettings(
        prompt_mode="auto", min_area=100, jitter=Jitter(k=0), auto=AutoSettings(points_per_side=8, max_masks=64)
    )
    (result,) = process_images([ImageInput("a.png", pixels, [])], [parse_variant("raw")], seg, settings)
    lung = lung_field(pixels)
    assert result.segments
    for s in result.segments:
        x, y = s.prompt
        assert lung[int(y), int(x)]
        assert s.consistency_std is None and s.perturbations == []
    assert all(p[0] < 70 for p in (s.prompt for s in result.segments))


def test_points_mode_rows_and_grabcut_points() -> None:
    shape = (96, 96)
    seg = DiscSegmenter(shape, target=(0, 0, 50, 96))
    image = ImageInput("p.png", np.zeros(shape, np.uint8), [], points=[[20, 30, 1], [70, 40, 1], [5, 5, 0]])
    (result,) = process_images([image], [parse_variant("raw")], seg, ProcessSettings(prompt_mode="points"))
    rows = [vars(s) for s in result.segments]
    assert [r["prompt"] for r in rows] == [[20.0, 30.0], [70.0, 40.0]]
    assert [r["prompt_kind"] for r in rows] == ["point", "point"]
    assert rows[0]["score"] == pytest.approx(0.95) and rows[1]["score"] == pytest.approx(0.5)
    assert all(len(r["perturbations"]) == 4 for r in rows) and rows[0]["box_iou"] is None and rows[0]["dice"] is None
    assert seg.calls == [2 * 5]
    # an image without foreground points is not prompted at all
    (empty,) = process_images(
        [ImageInput("q.png", np.zeros(shape, np.uint8), [], points=[[5, 5, 0]])],
        [parse_variant("raw")],
        seg,
        ProcessSettings(prompt_mode="points"),
    )
    assert empty.segments == [] and seg.calls == [10]

    img = np.full((128, 128), 20, np.uint8)
    img[52:68, 50:70] = 220  # inside the 32 px box GrabCut gets around the point
    pred = GrabCutSegmenter().predict_points(img, np.array([[[60.0, 60.0]]]), np.array([[1]]))
    expected = np.zeros((128, 128), bool)
    expected[52:68, 50:70] = True
    assert pred.masks.shape == (1, 128, 128) and pred.chosen.tolist() == [GrabCutSegmenter.CUT]
    inter = np.count_nonzero(pred.masks[0] & expected)
    assert 2 * inter / (pred.masks[0].sum() + expected.sum()) > 0.9
    assert not pred.masks[0][:, :40].any() and not pred.masks[0][:, 80:].any()  # inside the point's 32 px box


def test_submit_prompt_defaults(tmp_path: Path, phantom_dir: Path) -> None:
    settings = embedded_settings(tmp_path)
    images = str(phantom_dir / "images")
    labels = str(phantom_dir / "labels.csv")

    def mode(**kw: Any) -> str:
        result = submit(
            SubmitRequest(source=images, run=f"r{len(kw)}-{sorted(kw.items())!s:.40}", **kw), settings, execute=False
        )
        with session_scope(settings.database_url) as session:
            run = repo.get_run_by_id(session, run_id=result.run_id)
            assert run is not None
            return run.prompt_mode

    assert mode(model="sam_tiny") == "auto"
    assert mode(model="sam_tiny", annotations=labels) == "boxes"
    assert mode(model="grabcut") == "boxes"
    assert mode(model="sam_tiny", annotations=labels, prompts="auto") == "auto"
    with pytest.raises(SubmitError, match="SAM model"):
        mode(model="grabcut", prompts="auto")
    with pytest.raises(SubmitError, match="needs --points"):
        mode(model="sam_tiny", prompts="points")
    with pytest.raises(SubmitError, match="one of"):
        mode(model="sam_tiny", prompts="lasso")


@pytest.mark.integration
@pytest.mark.slow
def test_embedded_auto_and_points_runs(tmp_path: Path, phantom_dir: Path, tiny_checkpoint: Path) -> None:
    settings = embedded_settings(tmp_path)
    process = ProcessSettings(auto=AutoSettings(points_per_side=4, min_score=0.0, min_stability=0.0, lung_only=False))
    auto = submit(
        SubmitRequest(
            source=str(phantom_dir / "images"),
            run="auto",
            model="sam_tiny",
            checkpoint=str(tiny_checkpoint),
            process=process,
            gt_masks=str(phantom_dir / "masks"),
            annotations=str(phantom_dir / "labels.csv"),  # ground truth only: the prompts are the grid
            prompts="auto",
            variants=["raw"],
        ),
        settings,
    )
    points_csv = tmp_path / "points.csv"
    points_csv.write_text("key,x,y,label\nphantom-00000,100,120,1\nphantom-00000,30,30,0\nphantom-00001.png,60,90\n")
    points = submit(
        SubmitRequest(
            source=str(phantom_dir / "images"),
            run="pts",
            model="sam_tiny",
            checkpoint=str(tiny_checkpoint),
            prompts="points",
            points=str(points_csv),
            variants=["raw"],
        ),
        settings,
    )
    with session_scope(settings.database_url) as session:
        assert repo.status_counts(session, run_id=auto.run_id)["done"] == 12
        kinds = set(session.scalars(select(Segment.prompt_kind).where(Segment.run_id == auto.run_id)))
        assert kinds == {"auto"}
        auto_row = session.scalars(select(Run).where(Run.id == auto.run_id)).one()
        assert auto_row.prompt_mode == "auto" and auto_row.settings["auto"]["points_per_side"] == 4
        seg = session.scalars(select(Segment).where(Segment.run_id == auto.run_id)).first()
        assert seg is not None and seg.dice is not None and seg.nsd is not None and len(seg.prompt) == 2
        rows = session.scalars(select(Segment).where(Segment.run_id == points.run_id).order_by(Segment.id)).all()
        assert [(r.prompt, r.prompt_kind) for r in rows] == [([100.0, 120.0], "point"), ([60.0, 90.0], "point")]
        stored = session.scalars(select(Annotation.label).where(Annotation.run_id == points.run_id)).all()
        assert sorted(stored) == [0, 1, 1]
        assert repo.status_counts(session, run_id=points.run_id)["done"] == 12
        # detection level: the RSNA challenge metric of the automatic masks' component boxes over the labelled
        # images (all 12 are in labels.csv, negatives included: predicted on, they count as 0)
        (detection,) = collect(session, ["auto"]).detection
        assert detection["prompt_mode"] == "auto" and detection["measure"] == "rsna_challenge"
        assert detection["labelled"] == detection["images"] == 12  # something predicted everywhere
        assert 0.0 <= detection["rsna_score"] <= 1.0

    runner = CliRunner()
    refused = runner.invoke(app, ["submit", str(phantom_dir / "images"), "--run", "x", "--prompts", "points"])
    assert refused.exit_code == 2 and "--points" in refused.output
