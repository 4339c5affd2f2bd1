"""Run control in SQL: run state (cancel, resume, delete), image leases, what was published, the model-work record.

Keyword-only functions taking a session, as ``repo.py``. Times are the caller's clock in UTC (``utcnow``): lease
expiries are compared with the clock of the worker that reads them, so the machines' clocks must agree to well
within a lease (NTP does; a lease lasts ``Settings.visibility_timeout`` seconds, an hour by default).

A lease is ``(lease_owner, lease_worker, lease_expires)`` on the image row: the owner is the message that holds
the image — the Celery task id, which a redelivery and a retry keep — so the same message delivered again after
its pool process died takes its images back at once, while a *different* message for the same image (a re-submit,
a duplicate publish) finds them leased and leaves them alone. A lease past its expiry belongs to nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from pixelperfect.db import keyed
from pixelperfect.db.models import Annotation, Image, ImageStatus, ModelWork, Run, RunState, Segment, utcnow

#: The longest (seconds) a transaction that locked image rows may wait for its client's next statement.
LOCK_IDLE_MAX_S = 30.0
#: Rows per DELETE while a run is removed: each chunk is its own transaction, so an interrupted delete resumes.
DELETE_CHUNK = 5_000
_NO_SYNC = {"synchronize_session": False}


def _free(now: datetime, owner: str | None = None) -> Any:
    """The lease condition of an image that may be taken: none, expired, or already ``owner``'s."""
    terms = [Image.lease_owner.is_(None), Image.lease_expires.is_(None), Image.lease_expires < now]
    if owner is not None:
        terms.append(Image.lease_owner == owner)
    return or_(*terms)


# --- run state ------------------------------------------------------------------------------------------------


def run_state(session: Session, *, run_id: int) -> str | None:
    """``active``, ``paused``, ``cancelled`` or ``deleting``; None when the run does not exist (deleted)."""
    return session.scalar(select(Run.state).where(Run.id == run_id))


def set_run_state(session: Session, *, run_id: int, state: RunState, reason: str | None = None) -> None:
    session.execute(
        update(Run).where(Run.id == run_id).values(state=state.value, state_changed_at=utcnow(), state_reason=reason)
    )


def pause_run(session: Session, *, run_id: int, reason: str) -> bool:
    """An active run pauses itself (its store or database refused writes): state ``paused`` with ``reason``; its
    queued images stay queued, workers acknowledge its batches without model work. False when it was not active
    (already paused, cancelled, being deleted, gone)."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.state == RunState.active.value)
        .values(state=RunState.paused.value, state_changed_at=utcnow(), state_reason=reason[:2000])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def resume_paused(session: Session, *, run_id: int) -> int:
    """``submit`` on a paused run: active again, its queued images unpublished and unleased (their messages were
    acknowledged while it was paused), so the producer publishes them. An execution still holding one loses it to
    its new message at the fence (each image is written once). Returns the images queued for publishing."""
    set_run_state(session, run_id=run_id, state=RunState.active)
    result = session.execute(
        update(Image)
        .where(Image.run_id == run_id, Image.status == ImageStatus.queued.value)
        .values(published_at=None, lease_owner=None, lease_worker=None, lease_expires=None)
        .execution_options(**_NO_SYNC)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def cancel_run(session: Session, *, run_id: int) -> int:
    """Mark the run cancelled and its queued images without a live lease ``cancelled``: one UPDATE over the
    run's queued images (index ``ix_images_run_status``), however many there are. Images under a live lease are in
    a worker's batch right now and finish. Returns the images cancelled."""
    set_run_state(session, run_id=run_id, state=RunState.cancelled)
    result = session.execute(
        update(Image)
        .where(Image.run_id == run_id, Image.status == ImageStatus.queued.value, _free(utcnow()))
        .values(status=ImageStatus.cancelled.value, published_at=None)
        .execution_options(**_NO_SYNC)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def cancel_images(session: Session, *, run_id: int, keys: Sequence[str]) -> int:
    """A worker holding a message of a cancelled run: its queued, unleased images become ``cancelled`` (those a
    producer registered after the cancel, too). Returns how many."""
    result = session.execute(
        update(Image)
        .where(keyed.by_keys(session, run_id=run_id, keys=keys), Image.status == ImageStatus.queued.value)
        .where(_free(utcnow()))
        .values(status=ImageStatus.cancelled.value, published_at=None)
        .execution_options(**_NO_SYNC)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def resume_run(session: Session, *, run_id: int) -> int:
    """``submit`` on a cancelled run: active again, its cancelled images queued and unpublished (so the producer
    publishes them). Returns the images queued again."""
    set_run_state(session, run_id=run_id, state=RunState.active)
    result = session.execute(
        update(Image)
        .where(Image.run_id == run_id, Image.status == ImageStatus.cancelled.value)
        .values(status=ImageStatus.queued.value, published_at=None, lease_owner=None, lease_expires=None)
        .execution_options(**_NO_SYNC)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def requeue_failed(session: Session, *, run_id: int, reason: str) -> int:
    """The run's images that failed with ``reason`` queued again and unpublished, so the producer publishes them
    (``submit --allow-version-change`` for images refused as ``version_changed``). Returns how many."""
    result = session.execute(
        update(Image)
        .where(Image.run_id == run_id, Image.status == ImageStatus.failed.value, Image.error_reason == reason)
        .values(
            status=ImageStatus.queued.value,
            error=None,
            error_reason=None,
            finished_at=None,
            published_at=None,
            lease_owner=None,
            lease_expires=None,
        )
        .execution_options(**_NO_SYNC)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- leases ---------------------------------------------------------------------------------------------------


def limit_idle(session: Session, *, ttl_s: float) -> None:
    """PostgreSQL: the server ends this transaction, and its connection, if the client leaves it idle between two
    statements for longer than half a lease (``ttl_s / 2``, 1 to :data:`LOCK_IDLE_MAX_S` seconds): ``SET LOCAL
    idle_in_transaction_session_timeout``, for this transaction only. Called first in every transaction that locks
    image rows (a claim, a renewal, the fence, a release, a publish mark).

    A client cut off from the database inside such a transaction (a network partition, a host gone) would
    otherwise keep the rows locked until the server's TCP keepalive gives up on it, two hours by default, and
    every claim of those images — the takeover a lease promises once it expires — would wait as long
    (tests/partitions found it). With half a lease the locks are gone before the message comes back to another
    worker after the visibility timeout. A live client pauses for milliseconds between these statements. SQLite:
    nothing to do (no network; its lock ends with its process)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    ms = int(1000 * max(1.0, min(LOCK_IDLE_MAX_S, ttl_s / 2)))
    session.execute(select(func.set_config("idle_in_transaction_session_timeout", str(ms), True)))


def claim(
    session: Session, *, run_id: int, keys: Sequence[str], owner: str, worker: str, ttl_s: float
) -> list[tuple[int, str, str | None]]:
    """Lease the queued images among ``keys`` that nobody else holds; returns ``(image id, key, ground-truth mask
    URL)`` of those now held by ``owner``. Finished, failed, cancelled and other-leased images are not returned.

    PostgreSQL: a concurrent claim of the same row waits for this one's commit and then re-checks the condition,
    so of two workers exactly one gets an image. SQLite serialises writers.
    """
    if not keys:
        return []
    now = utcnow()
    rows = session.execute(
        update(Image)
        .where(keyed.by_keys(session, run_id=run_id, keys=keys), Image.status == ImageStatus.queued.value)
        .where(_free(now, owner))
        .values(lease_owner=owner, lease_worker=worker[:255], lease_expires=now + timedelta(seconds=ttl_s))
        .returning(Image.id, Image.key, Image.gt_mask_key)
        .execution_options(**_NO_SYNC)
    ).all()
    return [(int(i), str(k), g) for i, k, g in rows]


def renew(session: Session, *, image_ids: Sequence[int], owner: str, ttl_s: float, worker: str | None = None) -> int:
    """Extend ``owner``'s leases on ``image_ids`` (those taken by ``worker``, when given); returns how many it still
    held (fewer: one expired and was taken over by another message, or the same message delivered again took it
    back — whose result will be the same)."""
    if not image_ids:
        return 0
    held = [Image.lease_owner == owner] + ([Image.lease_worker == worker[:255]] if worker is not None else [])
    result = session.execute(
        update(Image)
        .where(keyed.by_ids(session, Image.id, image_ids), *held)
        .values(lease_expires=utcnow() + timedelta(seconds=ttl_s))
        .execution_options(**_NO_SYNC)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def held(session: Session, *, image_ids: Sequence[int], owner: str, worker: str) -> set[int]:
    """The fence of a batch's final transaction: those of ``image_ids`` still leased by ``owner`` as taken by
    ``worker`` (the lease's ``lease_worker``), locked until the commit (PostgreSQL ``FOR UPDATE``: a concurrent
    claim waits and then finds them finished). An image missing here was taken over — by another message after
    the lease expired, or by the same message delivered again while this execution still ran (a redelivery after
    the visibility timeout, or after a lost broker connection) — and the execution holding it now writes it."""
    if not image_ids:
        return set()
    rows = session.execute(
        select(Image.id)
        .where(keyed.by_ids(session, Image.id, image_ids), Image.lease_owner == owner)
        .where(Image.lease_worker == worker[:255])
        .with_for_update()
    ).all()
    return {int(i) for (i,) in rows}


def release(
    session: Session,
    *,
    run_id: int,
    owner: str,
    keys: Sequence[str] = (),
    image_ids: Sequence[int] = (),
    worker: str | None = None,
) -> int:
    """Drop ``owner``'s leases (those taken by ``worker``, when given) on the images named by ``keys`` or
    ``image_ids`` (index lookups, no scan)."""
    if not keys and not image_ids:
        return 0
    stmt = update(Image).where(Image.lease_owner == owner)
    if worker is not None:
        stmt = stmt.where(Image.lease_worker == worker[:255])
    if keys:
        stmt = stmt.where(keyed.by_keys(session, run_id=run_id, keys=keys))
    if image_ids:  # ids alone: no run condition the planner could prefer to the primary key
        stmt = stmt.where(keyed.by_ids(session, Image.id, image_ids))
    result = session.execute(
        stmt.values(lease_owner=None, lease_worker=None, lease_expires=None).execution_options(**_NO_SYNC)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def live_leases(session: Session, *, run_id: int) -> int:
    """Queued images of the run in a worker's batch right now (a lease not yet expired)."""
    stmt = select(func.count()).where(
        Image.run_id == run_id,
        Image.status == ImageStatus.queued.value,
        Image.lease_owner.is_not(None),
        Image.lease_expires >= utcnow(),
    )
    return int(session.scalar(stmt) or 0)


# --- publishing and model work --------------------------------------------------------------------------------


def mark_published(session: Session, *, run_id: int, keys: Sequence[str]) -> None:
    """Note that a message naming each of ``keys`` is now in the broker (a re-submit skips them)."""
    if keys:
        session.execute(
            update(Image)
            .where(keyed.by_keys(session, run_id=run_id, keys=keys))
            .values(published_at=utcnow())
            .execution_options(**_NO_SYNC)
        )


def open_publishing(session: Session, *, run_id: int, at: datetime) -> datetime | None:
    """A producer starts publishing run ``run_id`` at ``at``, stamping ``published_at`` as it registers images:
    the run's publish checkpoint becomes ``at`` unless a producer that did not finish left an earlier one (its
    stamps from then on may lack their messages: this producer publishes them again). Returns that earlier
    checkpoint, or None."""
    left = session.scalar(select(Run.publish_checkpoint).where(Run.id == run_id).with_for_update())
    if left is None:
        session.execute(update(Run).where(Run.id == run_id).values(publish_checkpoint=at))
    return None if left is None else _aware(left)


def _aware(at: datetime) -> datetime:
    """``at`` as UTC (SQLite hands ``DateTime(timezone=True)`` back naive, in the UTC it was written in)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def set_publish_checkpoint(session: Session, *, run_id: int, at: datetime | None) -> None:
    """Every image of run ``run_id`` stamped before ``at`` has its message in the broker (None: every stamped
    image has; the producer finished)."""
    session.execute(update(Run).where(Run.id == run_id).values(publish_checkpoint=at))


def orphan_candidates(session: Session, *, published_before: datetime, limit: int) -> list[tuple[int, int, str]]:
    """``(image id, run id, key)`` of queued images of active segmentation runs that were published before
    ``published_before`` and hold no live lease: images whose message may have been lost (the caller rules out
    those named by a message still in the broker). At most ``limit``, in run and id order.

    One query per active run (there are few), each on ``(run_id, status)`` of ``ix_images_run_status_progress``:
    a join ordered by run would let the planner walk every image of every run in index order (SQLite does)."""
    runs = session.execute(
        select(Run.id, Run.publish_checkpoint)
        .where(Run.state == RunState.active.value, Run.kind == "segment")
        .order_by(Run.id)
    ).all()
    out: list[tuple[int, int, str]] = []
    for run_id, checkpoint in runs:
        if len(out) >= limit:
            break
        # a producer still publishing: its stamps from its checkpoint on may precede their messages
        before = published_before if checkpoint is None else min(published_before, _aware(checkpoint))
        rows = session.execute(
            select(Image.id, Image.key)
            .where(Image.run_id == run_id, Image.status == ImageStatus.queued.value)
            .where(Image.published_at < before, _free(utcnow()))
            .order_by(Image.id)
            .limit(limit - len(out))
        ).all()
        out.extend((int(i), int(run_id), str(k)) for i, k in rows)
    return out


def mark_republished(
    session: Session, *, image_ids: Sequence[int], published_before: datetime
) -> list[tuple[int, str]]:
    """Stamp ``published_at`` now on those of ``image_ids`` still queued, unleased and published before
    ``published_before``; returns their ``(run id, key)``. Two sweepers racing over one image: only one gets it
    (PostgreSQL re-checks the condition after the other's commit; SQLite serialises writers)."""
    if not image_ids:
        return []
    now = utcnow()
    rows = session.execute(
        update(Image)
        .where(keyed.by_ids(session, Image.id, image_ids), Image.status == ImageStatus.queued.value)
        .where(Image.published_at < published_before, _free(now))
        .values(published_at=now)
        .returning(Image.run_id, Image.key)
        .execution_options(**_NO_SYNC)
    ).all()
    return [(int(r), str(k)) for r, k in rows]


def record_model_work(session: Session, *, run_id: int, image_ids: Sequence[int], worker: str) -> None:
    """Append one ``model_work`` row per image about to enter the encoder (commit before the encoder runs)."""
    if image_ids:
        now = utcnow()
        rows = [{"run_id": run_id, "image_id": i, "worker": worker[:255], "created_at": now} for i in image_ids]
        session.execute(insert(ModelWork), rows)


def model_work(session: Session, *, run_id: int) -> tuple[int, int]:
    """(encoder records, distinct images) of the run: records ÷ images is the model work per image."""
    n, distinct = session.execute(
        select(func.count(), func.count(func.distinct(ModelWork.image_id))).where(ModelWork.run_id == run_id)
    ).one()
    return int(n or 0), int(distinct or 0)


# --- all runs -------------------------------------------------------------------------------------------------


@dataclass
class RunOverview:
    """One line of ``pixelperfect runs``: ``images_per_s`` over the run's life (first to last finished image)."""

    name: str
    model: str
    variants: list[str]
    created_at: datetime
    state: str
    counts: dict[str, int]
    images_per_s: float | None
    state_reason: str | None = None  # why it paused itself

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.name,
            "model": self.model,
            "variants": self.variants,
            "created": self.created_at.isoformat(),
            "state": self.state,
            "state_reason": self.state_reason,
            "images": self.counts,
            "images_per_s": self.images_per_s,
        }


def runs_overview(session: Session) -> list[RunOverview]:
    """Every run with its image counts by status and images/s: two queries (the runs; the images grouped by run
    and status), whatever the number of runs."""
    runs = session.execute(
        select(Run.id, Run.name, Run.model, Run.variants, Run.created_at, Run.state, Run.state_reason).order_by(Run.id)
    ).all()
    grouped = session.execute(
        select(
            Image.run_id,
            Image.status,
            func.count(),
            func.min(Image.finished_at),
            func.max(Image.finished_at),
            func.count(Image.finished_at),
        ).group_by(Image.run_id, Image.status)
    ).all()
    counts: dict[int, dict[str, int]] = {}
    window: dict[int, list[Any]] = {}
    for run_id, status, n, first, last, finished in grouped:
        counts.setdefault(run_id, {s.value: 0 for s in ImageStatus})[status] = int(n)
        w = window.setdefault(run_id, [None, None, 0])
        if first is not None:
            w[0] = first if w[0] is None else min(w[0], first)
            w[1] = last if w[1] is None else max(w[1], last)
            w[2] += int(finished)
    out = []
    for run_id, name, model, variants, created, state, state_reason in runs:
        first, last, finished = window.get(run_id, [None, None, 0])
        rate = None
        if first is not None and last is not None and finished > 1 and last > first:
            rate = (finished - 1) / (last - first).total_seconds()
        out.append(
            RunOverview(
                name=name,
                model=model,
                variants=[v["name"] for v in variants],
                created_at=created,
                state=state,
                counts=counts.get(run_id, {s.value: 0 for s in ImageStatus}),
                images_per_s=rate,
                state_reason=state_reason,
            )
        )
    return out


# --- deleting a run -------------------------------------------------------------------------------------------


def mask_keys_page(session: Session, *, run_id: int, after_id: int, limit: int) -> list[tuple[int, str]]:
    """``(segment id, mask URL)`` of the run's segments with ids above ``after_id``, in id order (keyset paging)."""
    rows = session.execute(
        select(Segment.id, Segment.mask_key)
        .where(Segment.run_id == run_id, Segment.id > after_id, Segment.mask_key.is_not(None))
        .order_by(Segment.id)
        .limit(limit)
    ).all()
    return [(int(i), str(k)) for i, k in rows]


def delete_rows_chunk(session: Session, *, run_id: int) -> int:
    """Delete up to :data:`DELETE_CHUNK` of the run's rows, children first (segments, model work, annotations,
    then images); 0 when none is left. The run row itself goes last, with :func:`delete_run_row`."""
    for model in (Segment, ModelWork, Annotation, Image):
        ids = select(model.id).where(model.run_id == run_id).limit(DELETE_CHUNK)  # type: ignore[attr-defined]
        chunk = keyed.by_selected(session, model.id, ids)  # type: ignore[attr-defined]
        result = session.execute(delete(model).where(chunk).execution_options(**_NO_SYNC))
        deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if deleted:
            return deleted
    return 0


def delete_run_row(session: Session, *, run_id: int) -> None:
    session.execute(delete(Run).where(Run.id == run_id).execution_options(**_NO_SYNC))
