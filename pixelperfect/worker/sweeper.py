"""The orphan sweep: queued images whose message is gone are published again.

SQL is the record of what must be done; the broker only carries it. Late acks, the visibility timeout and
reject-on-worker-lost bring back every message a worker took and did not finish, but the Redis transport has one
window they do not cover: a worker pops a message (``BRPOP``) and then records it as unacknowledged (``ZADD`` +
``HSET``) in a second round trip. If Redis dies in between, the message is in neither place — gone, while its
images stay ``queued`` for ever with nothing left to deliver them (the chaos soak found it, once in several runs).

Each worker's main process runs a :class:`Sweeper` thread. Every ``Settings.orphan_sweep_s`` seconds one of them
(a Redis lock picks it) checks, only while the gpu queue is empty: queued images of active runs, published at least
one sweep interval ago, without a live lease and named by no unacknowledged message (those come back on their own
after the visibility timeout) are orphans. It stamps them published again in SQL (:func:`control.mark_republished`,
so a second sweeper cannot take them too) and publishes them in batches of ``Settings.batch_size``.

A false orphan (a message popped in the microseconds before it is recorded as unacknowledged) costs one duplicate
message, which the leases make harmless: its images are leased or finished when it arrives.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from pixelperfect.broker.names import SEGMENT_BATCH
from pixelperfect.config import Settings
from pixelperfect.db import control
from pixelperfect.db.models import utcnow
from pixelperfect.db.session import session_scope

log = logging.getLogger(__name__)

#: The Redis key of the sweep lock: one sweeper per interval across all workers.
SWEEP_LOCK = "pixelperfect:orphan-sweep"
#: Images looked at per sweep; a larger loss is published over several sweeps.
SWEEP_LIMIT = 10_000
#: The task whose messages name images (``run_id, keys``).
SEGMENT_TASK = SEGMENT_BATCH


def unacked_keys(raw: Iterable[bytes | str]) -> dict[int, set[str]]:
    """Run id → keys named by the given unacknowledged kombu messages (the values of the Redis transport's
    ``unacked`` hash: ``[message, exchange, routing key]``, the message's body base64-encoded Celery protocol 2,
    ``[args, kwargs, embed]``). Anything else — another task, a body it cannot read — names nothing."""
    held: dict[int, set[str]] = {}
    for value in raw:
        try:
            message = json.loads(value)[0]
            if message.get("headers", {}).get("task") != SEGMENT_TASK:
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            run_id, keys = int(args[0]), args[1]
            held.setdefault(run_id, set()).update(str(k) for k in keys)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue
    return held


def sweep_once(
    settings: Settings,
    channel: Any,
    publish: Callable[[int, list[str]], None],
    *,
    queue: str,
    owner: str = "sweeper",
) -> int:
    """One sweep (see the module docstring) through a kombu Redis ``channel``; returns the images published again.
    Nothing happens while ``queue`` holds messages or another worker holds the lock."""
    interval = settings.orphan_sweep_s
    if waiting(channel, queue) > 0:
        return 0
    client = channel.client
    if not client.set(SWEEP_LOCK, owner, nx=True, ex=max(1, int(interval))):
        return 0
    held = unacked_keys(client.hvals(channel.unacked_key))
    cutoff = utcnow() - timedelta(seconds=interval)
    with session_scope(settings.database_url) as session:
        candidates = control.orphan_candidates(session, published_before=cutoff, limit=SWEEP_LIMIT)
    ids = [i for i, run_id, key in candidates if key not in held.get(run_id, ())]
    if not ids:
        return 0
    with session_scope(settings.database_url) as session:
        control.limit_idle(session, ttl_s=settings.visibility_timeout)
        taken = control.mark_republished(session, image_ids=ids, published_before=cutoff)
    by_run: dict[int, list[str]] = {}
    for run_id, key in taken:
        by_run.setdefault(run_id, []).append(key)
    for run_id, keys in sorted(by_run.items()):
        log.warning(
            "run %s: %d queued image(s) had no message in the broker (lost in a broker failure, or popped but not "
            "read yet by a worker): published again",
            run_id,
            len(keys),
        )
        for start in range(0, len(keys), settings.batch_size):
            publish(run_id, keys[start : start + settings.batch_size])
    return len(taken)


def waiting(channel: Any, queue: str) -> int:
    """Messages waiting in ``queue`` (all its priority lists); 0 when it does not exist (Redis drops empty lists)."""
    from kombu.exceptions import ChannelError

    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError:
        return 0


class Sweeper(threading.Thread):
    """The sweep every ``settings.orphan_sweep_s`` seconds, in a daemon thread of the worker's main process.
    Errors (the broker or the database down) are logged and the next interval tries again."""

    def __init__(self, settings: Settings, app: Any, task: Any, queue: str, owner: str) -> None:
        super().__init__(name="pixelperfect-orphan-sweep", daemon=True)
        self.settings, self.app, self.task, self.queue, self.owner = settings, app, task, queue, owner
        self.stopped = threading.Event()

    def publish(self, run_id: int, keys: list[str]) -> None:
        self.task.apply_async((run_id, keys), argsrepr=f"(run={run_id}, keys={len(keys)}, swept)")

    def run(self) -> None:
        while not self.stopped.wait(self.settings.orphan_sweep_s):
            try:
                with self.app.pool.acquire(block=True, timeout=10) as conn:
                    sweep_once(self.settings, conn.default_channel, self.publish, queue=self.queue, owner=self.owner)
            except Exception as exc:
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                log.warning("orphan sweep failed (%s); trying again in %.0fs", reason, self.settings.orphan_sweep_s)

    def stop(self) -> None:
        self.stopped.set()
