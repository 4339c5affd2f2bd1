"""A run cancelled while its producer is still submitting: the producer stops at its next chunk, the batches
already handed out are acknowledged without model work (their images ``cancelled``), and submitting the run again
resumes it to the end (embedded: SQLite, file:// store, GrabCut)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from pixelperfect.db import control, repo
from pixelperfect.db.models import Annotation, Image
from pixelperfect.db.session import session_scope
from pixelperfect.embedded import SubmitRequest, submit
from pixelperfect.producer import enqueue
from pixelperfect.producer.lifecycle import cancel
from tests.conftest import embedded_settings

pytestmark = pytest.mark.integration


def test_cancel_stops_the_producer_and_submit_resumes(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_settings(tmp_path, model="grabcut")
    monkeypatch.setattr(enqueue, "REGISTER_CHUNK", 4)  # three chunks of the 12 phantoms
    req = SubmitRequest(source=str(phantom_dir / "images"), run="half", variants=["raw"], model="grabcut",
                        annotations=str(phantom_dir / "labels.csv"), batch_size=2)  # fmt: skip
    seen: list[int] = []

    def progress(done: int, _known: int) -> None:
        seen.append(done)
        if len(seen) == 1:  # after the first batch of the first chunk
            cancel("half", settings)

    first = submit(req, settings, on_progress=progress)
    assert first.stopped and first.images == 4, first
    with session_scope(settings.database_url) as s:
        run_id = first.run_id
        assert repo.status_counts(s, run_id=run_id) == {"queued": 0, "done": 2, "failed": 0, "cancelled": 2}
        prompted = _prompted(s, run_id)  # images with boxes go through the encoder; negatives have no prompt
        assert control.model_work(s, run_id=run_id) == (prompted, prompted)  # the cancelled batch: none

    again = submit(req, settings)
    assert not again.stopped and again.resumed == 2 and again.images == 12 and again.pending == 10
    with session_scope(settings.database_url) as s:
        assert repo.status_counts(s, run_id=run_id) == {"queued": 0, "done": 12, "failed": 0}
        prompted = _prompted(s, run_id)
        assert prompted >= 6 and control.model_work(s, run_id=run_id) == (prompted, prompted)


def _prompted(session: Any, run_id: int) -> int:
    """Done images of the run that have at least one box."""
    boxed = select(Annotation.image_key).where(Annotation.run_id == run_id)
    stmt = select(func.count()).where(Image.run_id == run_id, Image.status == "done", Image.key.in_(boxed))
    return int(session.scalar(stmt) or 0)
