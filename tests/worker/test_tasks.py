"""A poison batch that gives up marks only unfinished images failed, and counts them in the worker metrics."""

from __future__ import annotations

from pathlib import Path

from pixelperfect.db import repo
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitRequest, submit
from pixelperfect.worker.persist import give_up
from pixelperfect.worker.telemetry import get_metrics
from tests.conftest import embedded_settings


def test_give_up_fails_unfinished_images_and_counts_them(tmp_path: Path, phantom_dir: Path) -> None:
    settings = embedded_settings(tmp_path)
    result = submit(SubmitRequest(source=str(phantom_dir / "images"), run="g", model="grabcut"), settings,
                    execute=False)  # fmt: skip
    with session_scope(settings.database_url) as session:
        keys = repo.keys_with_status(session, run_id=result.run_id, statuses=["queued"])[:3]
        done = repo.images_by_key(session, run_id=result.run_id, keys=keys[:1])[keys[0]]
        repo.mark_done(session, image_id=done.id, segments=[], fields={})
    counter = get_metrics().images_failed.labels(reason="batch_error")
    before = counter._value.get()
    summary = give_up(result.run_id, keys, RuntimeError("checkpoint unreachable"))
    assert summary["failed"] == 2 and counter._value.get() == before + 2
    with session_scope(settings.database_url) as session:
        assert repo.status_counts(session, run_id=result.run_id)["failed"] == 2
        assert repo.failure_counts(session, run_id=result.run_id) == {"batch_error": 2}
