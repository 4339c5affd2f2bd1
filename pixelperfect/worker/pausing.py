"""A run that cannot write does not burn the archive: when this worker process could not write the results of
``Settings.pause_after_failed_writes`` consecutive images of a run — mask objects to its store, or its rows to the
database — or could not read them from its object-store source (S3 or a directory that does not answer), the run
pauses itself (state ``paused``, ``runs.state_reason`` saying what refused and why) instead of failing image after
image; so does a batch whose retries were all spent on such failures (``persist.give_up``). A missing object is
the image's own failure (``missing``), as is a PACS source that does not answer (``source_unavailable``, which
``retry`` repairs): neither counts here.

A paused run's images stay ``queued``; workers acknowledge its other batches without model work (``leases``), the
orphan sweep leaves it alone, and ``pixelperfect submit`` of the run resumes it (``control.resume_paused``: its
queued images are published again). ``status`` and ``runs`` show the reason.

The count is per worker process and per run, reset by every batch of the run that persisted: one slow write among
many good ones pauses nothing. Pausing needs the database: when that is what refuses, the pause fails too, and the
batch is retried as before (its images are never marked failed by a database that cannot be written anyway).
"""

from __future__ import annotations

import logging
from typing import Any

from pixelperfect.db import control
from pixelperfect.db.session import session_scope
from pixelperfect.failures import chain, first_line, reason

log = logging.getLogger(__name__)

#: (database URL, run id) -> images of the run this process could not write, in a row.
_FAILED: dict[tuple[str, int], int] = {}


class StoreFailure(RuntimeError):
    """A batch could not write its results to ``what`` (``store`` or ``database``), or read its images from it
    (``source``), at ``address``."""

    def __init__(self, what: str, address: str, cause: BaseException) -> None:
        verb = "read from" if what == "source" else "write to"
        super().__init__(f"cannot {verb} the {what} {address}: {first_line(cause, 300)}")
        self.what, self.address, self.words = what, address, reason(cause)


def store_failure(exc: BaseException) -> StoreFailure | None:
    """The :class:`StoreFailure` ``exc`` is or was raised from, if any."""
    return next((e for e in chain(exc) if isinstance(e, StoreFailure)), None)


def wrote(database_url: str, run_id: int) -> None:
    """A batch of the run persisted: its count of failed writes starts again."""
    _FAILED.pop((database_url, run_id), None)


def failed(database_url: str, run_id: int, images: int) -> int:
    """``images`` of the run could not be written; returns how many in a row now."""
    key = (database_url, run_id)
    _FAILED[key] = _FAILED.get(key, 0) + images
    return _FAILED[key]


def why(failure: StoreFailure, images: int | None = None) -> str:
    """The reason recorded on the paused run."""
    count = f"{images} consecutive image(s)" if images else "a batch, after its retries,"
    verb = "read from" if failure.what == "source" else "written to"
    return f"{count} could not be {verb} the {failure.what} {failure.address}: {failure.words}"


def pause(database_url: str, run_id: int, reason_text: str, *, ttl_s: float, release: Any = None) -> bool:
    """Pause the run with ``reason_text`` (and, in the same transaction, ``release(session)``: the batch's leases);
    True when this call paused it. Raises when the database cannot be written."""
    with session_scope(database_url) as session:
        control.limit_idle(session, ttl_s=ttl_s)
        paused = control.pause_run(session, run_id=run_id, reason=reason_text)
        if release is not None:
            release(session)
    _FAILED.pop((database_url, run_id), None)
    if paused:
        log.error("run %s paused itself: %s; `pixelperfect submit` of the run resumes it", run_id, reason_text)
    return paused
