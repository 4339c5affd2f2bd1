"""Identity and upserts on both dialects: a redelivered task changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from pixelperfect.db import repo
from pixelperfect.db.migrate import current, upgrade
from pixelperfect.db.models import Image, Segment
from pixelperfect.db.session import session_scope


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'repo.db'}"
    return str(request.getfixturevalue("pg_url"))


RUN_FIELDS = {
    "source_url": "file:///src",
    "store_url": "file:///out",
    "model": "sam_tiny",
    "checkpoint": None,
    "checkpoint_sha256": None,
    "variants": [{"name": "raw", "spec": "identity", "hash": "x"}],
    "prompt_mode": "boxes",
    "settings": {},
    "code_version": "0",
    "config_hash": "h",
}


def _segment(image_id: int, run_id: int, variant: str, p: int, score: float) -> dict[str, object]:
    return {
        "run_id": run_id,
        "image_id": image_id,
        "variant": variant,
        "prompt_index": p,
        "prompt_kind": "box",
        "prompt": [0, 0, 1, 1],
        "score": score,
        "scores": [score, 0, 0],
        "mask_key": f"m/{variant}/{p}.png",
    }


@pytest.mark.integration
def test_upserts_are_idempotent(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)  # a second upgrade is a no-op
    assert current(db_url) is not None
    with session_scope(db_url) as s:
        run = repo.create_run(s, name="r", fields=RUN_FIELDS)
        again = repo.create_run(s, name="r", fields=RUN_FIELDS)
        assert run.id == again.id
        assert repo.add_images(s, run_id=run.id, keys=["a.png", "b.png"]) == 2
        assert repo.add_images(s, run_id=run.id, keys=["a.png", "b.png", "c.png"]) == 1
        repo.add_annotations(s, run_id=run.id, boxes={"a.png": [[1, 2, 3, 4], [5, 6, 7, 8]]})
        repo.add_annotations(s, run_id=run.id, boxes={"a.png": [[1, 2, 3, 4], [5, 6, 7, 8]]})
        assert repo.count_annotations(s, run_id=run.id) == 2
        assert repo.boxes_for(s, run_id=run.id, keys=["a.png"]) == {"a.png": [[1, 2, 3, 4], [5, 6, 7, 8]]}
        rows = repo.images_by_key(s, run_id=run.id, keys=["a.png", "b.png"])
        run_id, image_a, image_b = run.id, rows["a.png"].id, rows["b.png"].id

    for score in (0.5, 0.7):  # the same task delivered twice
        with session_scope(db_url) as s:
            segs = [_segment(image_a, run_id, v, p, score) for v in ("raw", "clahe") for p in range(2)]
            repo.mark_done(s, image_id=image_a, segments=segs, fields={"width": 10})
    with session_scope(db_url) as s:
        repo.mark_failed(s, image_id=image_b, reason="truncated", error="b.png: truncated")
        repo.mark_failed(s, image_id=image_a, reason="late", error="a late failure must not undo done")
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Segment)) == 4
        assert s.scalar(select(func.max(Segment.score))) == 0.7
        a = s.get(Image, image_a)
        assert a is not None and a.status == "done" and a.attempts == 2 and a.n_segments == 4
        assert repo.status_counts(s, run_id=run_id) == {"queued": 1, "done": 1, "failed": 1}
        assert repo.failure_counts(s, run_id=run_id) == {"truncated": 1}
        assert repo.keys_with_status(s, run_id=run_id, statuses=["failed"]) == ["b.png"]
        assert repo.requeue(s, run_id=run_id, keys=["b.png"]) == 1
    with session_scope(db_url) as s:
        assert repo.keys_with_status(s, run_id=run_id, statuses=["queued"]) == ["b.png", "c.png"]
