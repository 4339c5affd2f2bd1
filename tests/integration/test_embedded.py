"""The embedded default end to end: file:// store, SQLite, in-process execution (no broker)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from pixelperfect.db import repo
from pixelperfect.db.models import Image, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitError, SubmitRequest, submit
from pixelperfect.storage import open_store
from tests.conftest import embedded_settings

pytestmark = pytest.mark.integration


def _positive_boxes(labels: Path) -> int:
    return sum(1 for row in csv.DictReader(labels.open()) if row["Target"] == "1")


def test_embedded_run_with_a_corrupt_image(tmp_path: Path, phantom_dir: Path, tiny_checkpoint: Path) -> None:
    settings = embedded_settings(tmp_path)
    images = tmp_path / "images"
    shutil.copytree(phantom_dir / "images", images)
    (images / "broken.png").write_bytes((phantom_dir / "images" / "phantom-00000.png").read_bytes()[:300])
    (images / "empty.dcm").write_bytes(b"")
    req = SubmitRequest(
        source=str(images),
        run="emb",
        variants=["raw", "clahe"],
        model="sam_tiny",
        checkpoint=str(tiny_checkpoint),
        annotations=str(phantom_dir / "labels.csv"),
        gt_masks=str(phantom_dir / "masks"),
        batch_size=5,
    )
    result = submit(req, settings)
    assert (result.images, result.new_images, result.batches) == (14, 14, 3)

    boxes = _positive_boxes(phantom_dir / "labels.csv")
    with session_scope(settings.database_url) as session:
        assert repo.status_counts(session, run_id=result.run_id) == {"queued": 0, "done": 12, "failed": 2}
        failed = {
            i.key: (i.error_reason, i.error) for i in session.scalars(select(Image).where(Image.status == "failed"))
        }
        n_segments = session.scalar(select(func.count()).select_from(Segment))
        seg = session.scalars(select(Segment).order_by(Segment.id)).first()
        assert seg is not None
        mask_key, prompt, dice = seg.mask_key, seg.prompt, seg.dice
        assert seg.scores is not None and len(seg.scores) == 3 and seg.score == max(seg.scores)
        assert seg.consistency_std is not None and seg.consistency_iou is not None
        assert len(seg.perturbations or []) == 4
        done = session.scalars(select(Image).where(Image.status == "done")).first()
        assert done is not None and set(done.timings or {}) >= {"download", "decode", "preprocess", "encode"}
        assert done.content_sha256 and done.width == 256
    assert failed["broken.png"][0] in ("truncated", "not_an_image")
    assert "broken.png" in failed["broken.png"][1]
    assert failed["empty.dcm"][0] == "empty"
    assert n_segments == boxes * 2

    # the mask object is where the row says, a lossless PNG of the image's size
    _store_root, _, key = mask_key.partition(f"{settings.store_url[len('file://') :]}/")
    data = open_store(settings.store_url).get(key)
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    assert 0.0 <= dice <= 1.0 and len(prompt) == 4

    again = submit(req, settings)
    assert (again.created, again.new_images, again.pending) == (False, 0, 0)
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Segment)) == boxes * 2


def test_same_run_name_with_other_config_is_refused(tmp_path: Path, phantom_dir: Path) -> None:
    settings = embedded_settings(tmp_path)
    base = dict(
        source=str(phantom_dir / "images"), run="r1", model="grabcut", annotations=str(phantom_dir / "labels.csv")
    )
    submit(SubmitRequest(**base, variants=["raw"]), settings, execute=False)  # type: ignore[arg-type]
    with pytest.raises(SubmitError, match="different configuration"):
        submit(SubmitRequest(**base, variants=["clahe"]), settings, execute=False)  # type: ignore[arg-type]


def test_bad_variant_fails_before_anything_is_registered(tmp_path: Path, phantom_dir: Path) -> None:
    settings = embedded_settings(tmp_path)
    with pytest.raises(SubmitError, match="nosuchstep"):
        submit(SubmitRequest(source=str(phantom_dir / "images"), run="bad", variants=["nosuchstep(k=1)"]), settings)
    assert not (tmp_path / "pp.db").exists()


def test_images_without_boxes_are_done_with_zero_segments(tmp_path: Path, phantom_dir: Path) -> None:
    settings = embedded_settings(tmp_path)
    result = submit(SubmitRequest(source=str(phantom_dir / "images"), run="nobox", model="grabcut"), settings)
    with session_scope(settings.database_url) as session:
        assert repo.status_counts(session, run_id=result.run_id)["done"] == 12
        assert repo.segment_count(session, run_id=result.run_id) == 0
