"""Steering runs: cancel one, delete one (rows and objects). The commands are in ``cli/runs.py``.

Cancelling is two UPDATEs (the run's state; its queued, unleased images -> ``cancelled``), whatever the number of
images: the messages stay in the broker and each worker acknowledges them without model work when it reads the
state. Deleting first marks the run ``deleting`` (workers skip it, ``submit`` refuses it), then removes the mask
and SEG objects under ``<run>/masks/`` and ``<run>/seg/`` of the run's store (listed from the store, so objects of
an interrupted batch go too; S3 ``DeleteObjects`` 1,000 keys per request), then the rows in chunks, the run row
last: interrupted anywhere, ``delete`` again finishes it. Embedding caches (``training/cache.py``) are shared
between runs and stay. SEGs already sent to a PACS stay there; ``delete`` lists them in a CSV file first.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from pixelperfect.config import Settings
from pixelperfect.db import control, repo, segs
from pixelperfect.db.models import RunState
from pixelperfect.db.session import session_scope
from pixelperfect.storage import open_store

#: Object prefixes under ``<store>/<run>/`` that belong to the run alone.
RUN_OBJECT_DIRS = ("masks", "seg", "sr", "kos")
#: Keys listed and deleted per round (one S3 ``DeleteObjects`` request each).
DELETE_PAGE = 1000


class RunBusyError(RuntimeError):
    """The run still has work queued or in flight."""


def unknown_run(name: str, known: list[str]) -> LookupError:
    """A ``LookupError`` naming the known runs closest to ``name`` (difflib), or all of a few."""
    return unknown("run", name, known, none="there are no runs yet")


def unknown(what: str, name: str, known: list[str], *, none: str | None = None) -> LookupError:
    """A ``LookupError`` "no ``what`` named ``name``" naming the known ones closest to it (difflib), or the first
    few; ``none``: the hint when nothing is known (the CLI's and the notebook API's one helper)."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(close) + "?"
    elif known:
        hint = f"known {what}s: " + ", ".join(known[:10]) + (", …" if len(known) > 10 else "")
    else:
        hint = none or f"there are no {what}s"
    return LookupError(f"no {what} named {name!r}; {hint}")


def _lookup(session: Session, name: str) -> tuple[int, str, str]:
    if not inspect(session.get_bind()).has_table("runs"):  # a database PixelPerfect never wrote to
        raise unknown_run(name, [])
    row = repo.get_run(session, name=name)
    if row is None:
        raise unknown_run(name, [r.name for r in repo.list_runs(session)])
    return row.id, row.state, row.store_url


@dataclass
class CancelResult:
    run: str
    cancelled: int  # images set to cancelled
    in_flight: int  # images under a live lease: their batches finish
    seconds: float


def cancel(name: str, settings: Settings) -> CancelResult:
    """Cancel run ``name`` (see the module docstring). Raises ``LookupError`` for an unknown run."""
    t0 = time.perf_counter()
    with session_scope(settings.database_url) as session:
        run_id, state, _ = _lookup(session, name)
        if state == RunState.deleting.value:
            raise RunBusyError(f"run {name!r} is being deleted: finish with `pixelperfect delete {name} --yes`")
        n = control.cancel_run(session, run_id=run_id)
        in_flight = control.live_leases(session, run_id=run_id)
    return CancelResult(name, n, in_flight, time.perf_counter() - t0)


@dataclass
class DeleteResult:
    run: str
    objects: int  # mask, SEG, SR and KOS objects deleted
    rows: int  # rows deleted (segments, model work, annotations, images, the run)
    seconds: float
    object_seconds: float  # of which deleting objects
    stowed: int = 0  # SEGs and SRs its STOW target accepted: they stay in the PACS, listed in ``stowed_list``
    stowed_list: str | None = None

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.object_seconds if self.object_seconds > 0 else 0.0


def delete(name: str, settings: Settings, *, keep_masks: bool = False, stowed_list: Path | None = None) -> DeleteResult:
    """Delete run ``name``: its objects (unless ``keep_masks``) and rows. Refuses (``RunBusyError``) an active
    run with queued images, and any run with images in a worker's batch right now; ``LookupError`` for an unknown
    run. Resumable: a run left ``deleting`` by an interrupted call is finished by the next.

    SEGs already sent to a PACS stay there: before any row goes, the first call writes them (image key, variant,
    SOPInstanceUID, the STOW-RS target) as CSV to ``stowed_list`` (default ``pixelperfect-<run>-stowed-segs.csv``
    in the working directory), so they can be found and removed there; nothing is written for a run without any."""
    t0 = time.perf_counter()
    stowed, listed = 0, None
    with session_scope(settings.database_url) as session:
        run_id, state, store_url = _lookup(session, name)
        queued = repo.status_counts(session, run_id=run_id)["queued"]
        if state in (RunState.active.value, RunState.paused.value) and queued:
            raise RunBusyError(f"run {name!r} has {queued} queued images: `pixelperfect cancel {name}` first")
        in_flight = control.live_leases(session, run_id=run_id)
        if in_flight:
            raise RunBusyError(
                f"run {name!r} has {in_flight} images in a worker's batch right now: wait for them (at most "
                f"{settings.visibility_timeout}s, the lease) and run delete again"
            )
        others = [r.name for r in repo.list_runs(session) if r.name.startswith(name + "/")]
        if state != RunState.deleting.value:  # an interrupted delete listed them already; rows may be gone since
            path = stowed_list or Path(f"pixelperfect-{name.replace('/', '_')}-stowed-segs.csv")
            stowed = _list_stowed(session, run_id, path)
            listed = str(path) if stowed else None
        control.set_run_state(session, run_id=run_id, state=RunState.deleting)
    objects, t1 = 0, time.perf_counter()
    if not keep_masks:
        objects = _delete_objects(name, store_url, settings, others)
    object_s = time.perf_counter() - t1
    rows = 0
    while True:  # chunks, each its own transaction
        with session_scope(settings.database_url) as session:
            n = control.delete_rows_chunk(session, run_id=run_id)
        if not n:
            break
        rows += n
    with session_scope(settings.database_url) as session:
        control.delete_run_row(session, run_id=run_id)
    return DeleteResult(name, objects, rows + 1, time.perf_counter() - t0, object_s, stowed, listed)


def _list_stowed(session: Session, run_id: int, path: Path) -> int:
    """Write the run's SEGs that a PACS accepted to ``path`` (CSV, streamed); their count (no file when 0)."""
    run = repo.get_run_by_id(session, run_id=run_id)
    target = str(((run.settings if run else None) or {}).get("stow_to") or "")
    rows = segs.stowed_segs(session, run_id=run_id)
    first = next(rows, None)
    if first is None:
        return 0
    n = 0
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["image_key", "variant", "sop_instance_uid", "stow_to"])
        for key, variant, uid in itertools.chain([first], rows):
            out.writerow([key, variant, uid, target])
            n += 1
    return n


def _delete_objects(name: str, store_url: str, settings: Settings, others: list[str]) -> int:
    """Delete every object under ``<run>/masks/``, ``<run>/seg/``, ``<run>/sr/`` and ``<run>/kos/``, page by page;
    keys that belong to another run whose name extends this one (``a`` and ``a/masks``) are left alone."""
    store = open_store(store_url, endpoint_url=settings.s3_endpoint_url)
    foreign = tuple(other + "/" for other in others)
    total = 0
    for sub in RUN_OBJECT_DIRS:
        prefix = f"{name}/{sub}/"
        while True:  # list from the start each round: what was deleted is gone from the listing
            page: list[str] = []
            for key in store.list(prefix):
                if not key.startswith(foreign):
                    page.append(key)
                    if len(page) == DELETE_PAGE:
                        break
            if not page:
                break
            total += store.delete_many(page)
            if len(page) < DELETE_PAGE:
                break
    return total
