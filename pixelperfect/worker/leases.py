"""A batch's hold on its images: leases in SQL instead of duplicate model work, and the durable model-work record.

``run_batch`` first *acquires*: in one transaction it reads the run's state and leases the batch's queued images
that no other message holds (``db/control.py``). A cancelled run's images are marked ``cancelled`` instead, and
images that are finished, failed or held by another live message are left alone — that message is acknowledged
without model work. Before each encoder group the batch appends one ``model_work`` row per image and renews its
leases, in one committed transaction: a process killed right after still has its work counted, and a lease never
expires while its batch is alive.

The lease lasts ``Settings.visibility_timeout`` seconds: a batch whose worker died comes back from the broker after
that long (or at once, when only its pool process died), under the same task id, which owns the lease; any other
message finds the lease expired by then and may take the images over.

The owner being the task id, the same message can run twice at once: Redis hands a batch that runs longer than the
visibility timeout out a second time, and a worker that lost its broker connection puts its message back while
the cancelled batch may still be finishing. Each execution therefore takes the lease under a token of its own
(``lease_worker``: ``token@host:pid``), and the batch's final transaction is *fenced* (``control.held``): it
writes only the images its execution still holds. A second execution of the same message takes the images over
at once, and the first one's results for them are dropped — each image is written once, by the execution that
holds it. (Its model work is done twice; the visibility timeout must still exceed the longest batch, config.py.)

Every transaction here that locks image rows (acquire, renew, fence, release) first tells PostgreSQL to end it if
its client goes quiet for half a lease (``control.limit_idle``): a worker cut off from the database between two
statements — a network partition — must not keep the rows locked, or the execution taking its images over would
wait on the lock until the heal (tests/partitions).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from pixelperfect.db import control
from pixelperfect.db.models import RunState
from pixelperfect.db.session import session_scope

log = logging.getLogger(__name__)


@dataclass
class Hold:
    """What a batch holds: ``todo`` as ``(image id, key, ground-truth mask URL)``; ``state`` is the run's state
    (None: the run no longer exists)."""

    run_id: int
    owner: str
    worker: str  # host:pid, as the model-work record names it
    lease_id: str  # this execution's token@host:pid, as the lease names it (the fence)
    ttl_s: float
    database_url: str
    state: str | None
    todo: list[tuple[int, str, str | None]] = field(default_factory=list)
    cancelled: int = 0
    generated: bool = False  # the owner was made up for this call (embedded): released if the batch fails

    def before_model(self, image_ids: list[int], renew_ids: list[int]) -> None:
        """Record ``image_ids`` as entering the encoder now and renew the leases on ``renew_ids`` (committed)."""
        with session_scope(self.database_url) as session:
            control.limit_idle(session, ttl_s=self.ttl_s)
            control.record_model_work(session, run_id=self.run_id, image_ids=image_ids, worker=self.worker)
            held = control.renew(session, image_ids=renew_ids, owner=self.owner, ttl_s=self.ttl_s, worker=self.lease_id)
        if held < len(renew_ids):
            log.warning(
                "batch %s lost %d of its leases (taken over by another delivery): their results are left to it",
                self.owner,
                len(renew_ids) - held,
            )

    def fence(self, session: Any) -> set[int]:
        """In the final transaction: the batch's image ids this execution still holds (locked until the commit)."""
        ids = [i for i, _, _ in self.todo]
        control.limit_idle(session, ttl_s=self.ttl_s)
        kept = control.held(session, image_ids=ids, owner=self.owner, worker=self.lease_id)
        if len(kept) < len(ids):
            log.warning(
                "batch %s: %d of its %d image(s) were taken over by another delivery; not written here",
                self.owner,
                len(ids) - len(kept),
                len(ids),
            )
        return kept

    def release(self, session: Any) -> None:
        """Drop this execution's leases inside the caller's (final) transaction."""
        ids = [i for i, _, _ in self.todo]
        control.release(session, run_id=self.run_id, owner=self.owner, image_ids=ids, worker=self.lease_id)

    def release_now(self) -> None:
        """Drop the leases in a transaction of their own; errors are logged (the leases then expire)."""
        try:
            with session_scope(self.database_url) as session:
                control.limit_idle(session, ttl_s=self.ttl_s)
                self.release(session)
        except Exception as exc:
            log.warning("could not release the leases of batch %s (%s); they expire in %.0fs", self.owner, exc,
                        self.ttl_s)  # fmt: skip


def acquire(database_url: str, run_id: int, keys: list[str], *, owner: str | None, host: str, ttl_s: float) -> Hold:
    """Lease the batch's images (see the module docstring). ``owner``: the message's id (Celery task id); None
    makes one up for this call."""
    worker = f"{host}:{os.getpid()}"
    hold = Hold(
        run_id=run_id,
        owner=owner or f"local-{uuid.uuid4()}",
        worker=worker,
        lease_id=f"{uuid.uuid4().hex[:12]}@{worker}"[:255],
        ttl_s=ttl_s,
        database_url=database_url,
        state=None,
        generated=owner is None,
    )
    with session_scope(database_url) as session:
        control.limit_idle(session, ttl_s=ttl_s)
        hold.state = control.run_state(session, run_id=run_id)
        if hold.state == RunState.cancelled.value:
            hold.cancelled = control.cancel_images(session, run_id=run_id, keys=keys)
        elif hold.state == RunState.active.value:
            claimed = control.claim(
                session, run_id=run_id, keys=keys, owner=hold.owner, worker=hold.lease_id, ttl_s=ttl_s
            )
            order = {key: i for i, key in reversed(list(enumerate(keys)))}
            hold.todo = sorted(claimed, key=lambda row: order[row[1]])  # the batch's order, not the database's
    if hold.state != RunState.active.value:
        log.info("run %s is %s: batch %s acknowledged without model work", run_id, hold.state or "gone", hold.owner)
    return hold


def release_keys(database_url: str, run_id: int, keys: list[str], owner: str, *, ttl_s: float) -> None:
    """Drop ``owner``'s leases on ``keys`` (a batch split into new messages hands its images over to them)."""
    with session_scope(database_url) as session:
        control.limit_idle(session, ttl_s=ttl_s)
        control.release(session, run_id=run_id, owner=owner, keys=keys)
