"""Run control in SQL on both dialects: leases (one owner at a time, the same message takes its images back, an
expired lease is taken over), cancel and resume, published images, the model-work record, the runs overview."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from pixelperfect.db import bulk, control, repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import Image, RunState, utcnow
from pixelperfect.db.session import session_scope
from tests.db.test_repo import RUN_FIELDS

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'control.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    return str(url)


def _run(url: str, name: str = "r", keys: tuple[str, ...] = ("a", "b", "c")) -> int:
    with session_scope(url) as s:
        run = repo.create_run(s, name=name, fields=RUN_FIELDS)
        bulk.register_images(s, run_id=run.id, keys=list(keys))
        return run.id


def _claim(url: str, run_id: int, keys: list[str], owner: str, ttl_s: float = 60) -> list[str]:
    with session_scope(url) as s:
        return sorted(k for _, k, _ in control.claim(s, run_id=run_id, keys=keys, owner=owner, worker="w", ttl_s=ttl_s))


def test_a_lease_has_one_owner_the_same_message_retakes_it_and_an_expired_one_is_taken_over(db_url: str) -> None:
    run_id = _run(db_url)
    assert _claim(db_url, run_id, ["a", "b"], "task-1") == ["a", "b"]
    assert _claim(db_url, run_id, ["a", "b", "c"], "task-2") == ["c"]  # a duplicate message: only the free image
    assert _claim(db_url, run_id, ["a", "b"], "task-1") == ["a", "b"]  # redelivered after its process died
    with session_scope(db_url) as s:  # task-1's worker died long ago: its leases expired
        s.execute(update(Image).where(Image.key == "a").values(lease_expires=utcnow() - timedelta(seconds=1)))
        assert control.live_leases(s, run_id=run_id) == 2  # b (task-1) and c (task-2)
    assert _claim(db_url, run_id, ["a", "b"], "task-3") == ["a"]
    with session_scope(db_url) as s:
        ids = {k: i.id for k, i in repo.images_by_key(s, run_id=run_id, keys=["a", "b"]).items()}
        assert control.renew(s, image_ids=list(ids.values()), owner="task-1", ttl_s=60) == 1  # lost a to task-3
        repo.mark_done(s, image_id=ids["a"], segments=[], fields={})
    assert _claim(db_url, run_id, ["a"], "task-3") == []  # finished: nobody claims it again
    with session_scope(db_url) as s:
        assert control.release(s, run_id=run_id, owner="task-2", keys=["c"]) == 1
    assert _claim(db_url, run_id, ["c"], "task-4") == ["c"]


def test_cancel_leaves_leased_images_to_finish_and_submit_resumes(db_url: str) -> None:
    run_id = _run(db_url)
    assert _claim(db_url, run_id, ["a"], "task-1") == ["a"]
    with session_scope(db_url) as s:
        assert control.cancel_run(s, run_id=run_id) == 2  # b and c; a is in a worker's batch
        assert control.run_state(s, run_id=run_id) == RunState.cancelled.value
        assert repo.status_counts(s, run_id=run_id) == {"queued": 1, "done": 0, "failed": 0, "cancelled": 2}
    assert _claim(db_url, run_id, ["b", "c"], "task-2") == []  # cancelled images are not worked on
    with session_scope(db_url) as s:
        assert control.resume_run(s, run_id=run_id) == 2
        assert control.run_state(s, run_id=run_id) == RunState.active.value
        assert repo.status_counts(s, run_id=run_id) == {"queued": 3, "done": 0, "failed": 0}


def test_resubmit_registers_only_images_without_a_message(db_url: str) -> None:
    run_id = _run(db_url, keys=("a", "b", "c", "d"))
    with session_scope(db_url) as s:
        control.mark_published(s, run_id=run_id, keys=["a", "b"])
        assert bulk.register_images(s, run_id=run_id, keys=["a", "b", "c", "d", "e"], unpublished_only=True) == (
            1,
            ["c", "d", "e"],
        )
        assert bulk.register_images(s, run_id=run_id, keys=["a", "b", "c"])[1] == ["a", "b", "c"]  # --republish


def test_model_work_and_the_runs_overview(db_url: str) -> None:
    first = _run(db_url, "first", ("a", "b"))
    _run(db_url, "second", ("a",))
    with session_scope(db_url) as s:
        ids = [i.id for i in repo.images_by_key(s, run_id=first, keys=["a", "b"]).values()]
        control.record_model_work(s, run_id=first, image_ids=ids, worker="w:1")
        control.record_model_work(s, run_id=first, image_ids=ids[:1], worker="w:2")
        assert control.model_work(s, run_id=first) == (3, 2)
        repo.mark_done(s, image_id=ids[0], segments=[], fields={})
        overview = {r.name: r for r in control.runs_overview(s)}
    assert list(overview) == ["first", "second"]
    assert overview["first"].counts == {"queued": 1, "done": 1, "failed": 0, "cancelled": 0}
    assert overview["second"].counts["queued"] == 1 and overview["second"].state == "active"
    assert overview["first"].as_dict()["variants"] == ["raw"]
