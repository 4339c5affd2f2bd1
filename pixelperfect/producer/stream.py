"""The producer at archive scale: keys stream from the listing in chunks, each chunk is registered in one
transaction and its batches published in pipelined groups, and publishing pauses while the queue is full.

Memory stays bounded by the chunk size (:data:`REGISTER_CHUNK` keys and their rows), not by the archive: a million
keys are never held in one list. Redis stays bounded by the backpressure limit (``max_queued_batches``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, Generic, TypeVar

from pixelperfect.broker.names import SEGMENT_BATCH
from pixelperfect.inputs.annotations import stem

log = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")

#: Keys registered per database transaction (and held in memory at once): 10k keys ≈ 3 MB of rows in Python.
REGISTER_CHUNK = 10_000
#: Messages per pipelined broker round trip, and how often the queue length is checked.
PUBLISH_CHUNK = 200


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter), drawn lazily from ``items``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class KeyMatcher(Generic[V]):
    """The streaming form of :func:`~pixelperfect.inputs.annotations.match_to_keys`: attaches values named by
    image key or stem (RSNA ``patientId``) to keys as they are listed.

    A key matches an identifier equal to the key itself first; otherwise one equal to its stem, or whose own stem
    equals its stem. Only the first key listed for a stem takes that stem's value (as with the whole listing).
    Memory: the values, plus one stem per matched key.
    """

    def __init__(self, values: dict[str, V]) -> None:
        self.values = values
        self._by_stem: dict[str, str] = {}
        for ident in values:
            self._by_stem.setdefault(ident, ident)
        for ident in values:
            self._by_stem.setdefault(stem(ident), ident)
        self._claimed: set[str] = set()
        self.matched = 0

    def match(self, keys: Iterable[str]) -> dict[str, V]:
        out: dict[str, V] = {}
        for key in keys:
            if key in self.values:
                out[key] = self.values[key]
                continue
            key_stem = stem(key)
            ident = self._by_stem.get(key_stem)
            if ident is not None and key_stem not in self._claimed:
                self._claimed.add(key_stem)
                out[key] = self.values[ident]
        self.matched += len(out)
        return out


class Batcher:
    """Cuts a stream of keys into batches of ``size``; a short remainder waits for the next chunk."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self.size = size
        self._pending: list[str] = []

    def add(self, keys: Sequence[str]) -> list[list[str]]:
        self._pending.extend(keys)
        cut = len(self._pending) - len(self._pending) % self.size
        full, self._pending = self._pending[:cut], self._pending[cut:]
        return [full[i : i + self.size] for i in range(0, cut, self.size)]

    @property
    def held(self) -> int:
        """Keys waiting for a full batch."""
        return len(self._pending)

    def flush(self) -> list[list[str]]:
        rest, self._pending = self._pending, []
        return [rest] if rest else []


class Backpressure:
    """Pause while the queue holds more than ``high`` messages; resume once it is down to ``low``.

    ``length()`` reads the queue's length (one broker round trip). :meth:`room` blocks while the queue is full and
    returns how many messages may be published before the next check, so the queue never grows past ``high``
    because of this producer. ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        length: Callable[[], int],
        high: int,
        low: int | None = None,
        *,
        poll_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if high < 1:
            raise ValueError(f"backpressure high-water mark must be >= 1, got {high}")
        low = high // 2 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"backpressure low-water mark must be in 0..{high}, got {low}")
        if poll_s <= 0:
            raise ValueError(f"backpressure poll interval must be > 0 s, got {poll_s}")
        self.length, self.high, self.low, self.poll_s = length, high, low, poll_s
        self.sleep, self.clock = sleep, clock
        self.pauses = 0
        self.paused_s = 0.0
        self.max_seen = 0

    def room(self) -> int:
        """Messages that may be published now (>= 1), after waiting for the queue to drain if it is full."""
        current = self.length()
        self.max_seen = max(self.max_seen, current)
        if current < self.high:
            return self.high - current
        self.pauses += 1
        started = self.clock()
        log.info("queue holds %d batches (limit %d): pausing until it is down to %d", current, self.high, self.low)
        while current > self.low:
            self.sleep(self.poll_s)
            current = self.length()
        self.paused_s += self.clock() - started
        log.info("queue down to %d batches after %.1fs: resuming", current, self.clock() - started)
        return self.high - current


def queue_length(app: Any, broker_url: str, queue: str) -> Callable[[], int]:
    """A function returning the number of messages waiting in ``queue`` on the broker (Redis: the list's length
    over its priority steps; AMQP: the queue's message count). A queue not declared yet counts 0."""
    from kombu.exceptions import ChannelError

    conn = app.connection_for_read(url=broker_url)
    channel: list[Any] = [None]

    def length() -> int:
        if channel[0] is None:
            channel[0] = conn.channel()
        try:
            return int(channel[0].queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:  # not declared yet: empty (AMQP closes the channel on this, so take a new one)
            channel[0] = None
            return 0

    length.close = conn.release  # type: ignore[attr-defined]
    return length


class Publisher:
    """Publishes ``segment_batch`` messages for one run to ``broker_url``, by task name (the producer never imports
    the worker's tasks): pipelined groups of :data:`PUBLISH_CHUNK` (kombu's Redis publish batch: one round trip per
    group), each group only after :class:`Backpressure` made room.

    The broker is the settings' own, not the one the Celery app was configured with when it was imported, so a
    process that changes its settings (tests, an embedding application) publishes where it means to.
    """

    def __init__(
        self, app: Any, broker_url: str, run_id: int, run_name: str, backpressure: Backpressure | None
    ) -> None:
        self.app, self.run_id, self.run_name = app, run_id, run_name
        self.backpressure = backpressure
        self.published = 0
        self._conn = app.connection_for_write(url=broker_url)
        self._producer = app.amqp.Producer(self._conn)

    def publish(self, batches: Sequence[list[str]]) -> None:
        start = 0
        while start < len(batches):
            room = self.backpressure.room() if self.backpressure else PUBLISH_CHUNK
            group = batches[start : start + min(PUBLISH_CHUNK, room)]
            producer = self._producer
            with producer.batch(max_size=PUBLISH_CHUNK) if hasattr(producer, "batch") else nullcontext():
                for keys in group:
                    self.app.send_task(
                        SEGMENT_BATCH,
                        (self.run_id, keys),
                        producer=producer,
                        argsrepr=f"(run={self.run_name!r}, keys={len(keys)})",  # what Flower shows
                    )
            self.published += len(group)
            start += len(group)

    def close(self) -> None:
        self._producer.close()
        self._conn.release()
