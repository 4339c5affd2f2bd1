"""Bulk DB writes on real PostgreSQL and SQLite: registration of a chunk of keys, a batch's results at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pixelperfect.db import bulk, repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Image, Segment
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.records import SegmentRecord

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'bulk.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    return url


def _run(url: str, name: str = "r") -> int:
    with session_scope(url) as session:
        fields = dict(source_url="file:///a", store_url="file:///s", model="grabcut", checkpoint=None,
                      checkpoint_sha256=None, variants=[], settings={}, code_version="0", config_hash="h")  # fmt: skip
        return repo.create_run(session, name=name, fields=fields).id


def test_register_images_new_resumed_and_duplicates(db_url: str) -> None:
    run_id = _run(db_url)
    with session_scope(db_url) as session:
        new, queued = bulk.register_images(
            session, run_id=run_id, keys=["b", "a", "c", "a"], gt_masks={"a": "s3://m/a"}
        )
    assert new == 3 and queued == ["b", "a", "c"]  # listing order, each key once
    with session_scope(db_url) as session:
        repo.mark_failed(session, image_id=repo.images_by_key(session, run_id=run_id, keys=["b"])["b"].id,
                         reason="x", error="y")  # fmt: skip
        rows = repo.images_by_key(session, run_id=run_id, keys=["a"])
        session.execute(Image.__table__.update().where(Image.id == rows["a"].id).values(status="done"))
    with session_scope(db_url) as session:  # a resubmission: only the new key and the still-queued one
        new, queued = bulk.register_images(session, run_id=run_id, keys=["a", "b", "c", "d"])
    assert new == 1 and queued == ["c", "d"]
    with session_scope(db_url) as session:
        gt = {r.key: r.gt_mask_key for r in session.scalars(select(Image).where(Image.run_id == run_id))}
    assert gt == {"a": "s3://m/a", "b": None, "c": None, "d": None}
    other = _run(db_url, "other")  # the identity is (run, key): another run registers the same keys anew
    with session_scope(db_url) as session:
        assert bulk.register_images(session, run_id=other, keys=["a", "b"])[0] == 2
    with pytest.raises(ValueError, match="at most"), session_scope(db_url) as session:
        bulk.register_images(session, run_id=run_id, keys=[str(i) for i in range(bulk.MAX_KEYS + 1)])


def _segment(image_id: int, run_id: int, p: int, score: float) -> dict:  # type: ignore[type-arg]
    return _record(image_id, p, score).row(run_id=run_id, image_id=image_id)


def _record(image_id: int, p: int, score: float) -> SegmentRecord:
    values: dict[str, Any] = {f.name: None for f in dataclasses.fields(SegmentRecord) if f.name != "mask_png"}
    values.update(variant="raw", prompt_index=p, prompt_kind="box", prompt=[0, 0, 1, 1], score=score,
                  mask_key=f"file:///m/{image_id}/{p}.png")  # fmt: skip
    return SegmentRecord(**values)


def test_mark_done_many_matches_mark_done_and_repeats_safely(db_url: str) -> None:
    run_id = _run(db_url)
    with session_scope(db_url) as session:
        bulk.register_images(session, run_id=run_id, keys=["a", "b", "c"])
        ids = {k: r.id for k, r in repo.images_by_key(session, run_id=run_id, keys=["a", "b", "c"]).items()}
    fields = {"width": 8, "height": 6, "meta": {"bits": 8}, "worker_host": "w1", "content_sha256": "f" * 64}
    for attempt in (1, 2):  # a redelivered batch writes the same again
        with session_scope(db_url) as session:
            bulk.mark_done_many(session, run_id=run_id, images=[
                bulk.DoneImage(ids["a"], [_record(ids["a"], 0, 0.5), _record(ids["a"], 1, 0.75)], fields),
                bulk.DoneImage(ids["b"], [], fields),
            ])  # fmt: skip
            repo.mark_done(session, image_id=ids["c"], segments=[_segment(ids["c"], run_id, 0, 0.5)], fields=fields)
        with session_scope(db_url) as session:
            rows = repo.images_by_key(session, run_id=run_id, keys=["a", "b", "c"])
            for key, n in (("a", 2), ("b", 0), ("c", 1)):
                row = rows[key]
                assert (row.status, row.attempts, row.n_segments) == ("done", attempt, n)
                assert (row.width, row.meta, row.worker_host) == (8, {"bits": 8}, "w1")
                assert row.finished_at is not None and row.error is None
            scores = session.execute(select(Segment.image_id, Segment.prompt_index, Segment.score)).all()
    assert sorted(scores) == sorted([(ids["a"], 0, 0.5), (ids["a"], 1, 0.75), (ids["c"], 0, 0.5)])
