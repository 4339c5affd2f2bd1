"""No scoring on the model thread: in the worker's overlapped pipeline (embedded runs, tiny SAM), every prompt
mode is scored and PNG-encoded on the post threads, and the thread that calls the model only runs the model."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pixelperfect.db import repo
from pixelperfect.db.models import Segment
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitRequest, submit
from pixelperfect.pipeline import stages as process
from pixelperfect.pipeline.model.sam import SamSegmenter
from pixelperfect.pipeline.options import AutoSettings, ProcessSettings
from pixelperfect.pipeline.score import metrics
from pixelperfect.pipeline.score import segments as score
from tests.conftest import embedded_settings

pytestmark = pytest.mark.integration

#: The scoring entry points: the row builder, its metrics, and the mask PNG encoder.
SCORING = {
    process: ["score_prediction", "encode_mask_png"],
    score: ["consistency", "boxes_from_mask", "dice", "iou", "surface_scores", "box_iou", "box_dice", "mask_bbox"],
    metrics: ["nsd", "hd95"],  # surface_scores' metrics, in mm or px
}
MODEL = ["encode", "predict_boxes", "predict_points"]


def _spy(calls: dict[str, set[str]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.setdefault(name, set()).add(threading.current_thread().name)
        return fn(*args, **kwargs)

    return wrapper


def test_no_scoring_runs_on_the_model_thread(
    tmp_path: Path, phantom_dir: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scoring: dict[str, set[str]] = {}
    model: dict[str, set[str]] = {}
    for module, names in SCORING.items():
        for name in names:
            monkeypatch.setattr(module, name, _spy(scoring, name, getattr(module, name)))
    for name in MODEL:
        monkeypatch.setattr(SamSegmenter, name, _spy(model, name, getattr(SamSegmenter, name)))

    settings = embedded_settings(tmp_path, encoder_batch=2)
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((phantom_dir / "images").iterdir())[:3]:
        shutil.copy(path, images / path.name)
    points = tmp_path / "points.csv"
    points.write_text("key,x,y\nphantom-00000,100,120\nphantom-00001,60,90\n")
    common: dict[str, Any] = dict(source=str(images), model="sam_tiny", checkpoint=str(tiny_checkpoint),
                                  variants=["raw"], gt_masks=str(phantom_dir / "masks"))  # fmt: skip
    auto = ProcessSettings(auto=AutoSettings(points_per_side=4, min_score=0.0, min_stability=0.0, lung_only=False))
    runs = [
        SubmitRequest(**common, run="box", annotations=str(phantom_dir / "labels.csv")),
        SubmitRequest(**common, run="point", prompts="points", points=str(points)),
        SubmitRequest(**common, run="auto", prompts="auto", process=auto),
    ]
    for req in runs:
        submit(req, settings)
    with session_scope(settings.database_url) as session:
        kinds = set(session.scalars(select(Segment.prompt_kind)))
        assert repo.status_counts(session, run_id=1) == {"queued": 0, "done": 3, "failed": 0}
    assert kinds == {"box", "point", "auto"}

    assert set(model) == set(MODEL)  # every prompt mode ran the model
    assert {"score_prediction", "encode_mask_png", "consistency", "nsd"} <= set(scoring)
    model_threads = set().union(*model.values())
    scoring_threads = set().union(*scoring.values())
    assert model_threads == {threading.current_thread().name}  # embedded: the model runs on the calling thread
    assert not model_threads & scoring_threads, {k: v & model_threads for k, v in scoring.items()}
    assert all(name.startswith("pp-post") for name in scoring_threads), scoring_threads
