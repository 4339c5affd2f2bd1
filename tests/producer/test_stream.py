"""The producer's streaming pieces on their own: chunks, batches across chunks, key matching, backpressure."""

from __future__ import annotations

import pytest

from pixelperfect.inputs.annotations import match_to_keys
from pixelperfect.producer.stream import Backpressure, Batcher, KeyMatcher, chunked


def test_chunked_is_lazy_and_complete() -> None:
    drawn: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        for i in range(25):
            drawn.append(i)
            yield i

    chunks = chunked(source(), 10)
    assert next(chunks) == list(range(10))
    assert len(drawn) == 10  # nothing beyond the first chunk was read
    assert [len(c) for c in chunks] == [10, 5]
    with pytest.raises(ValueError, match="chunk size"):
        next(chunked([], 0))


def test_batcher_carries_the_remainder_across_chunks() -> None:
    batcher = Batcher(4)
    assert batcher.add(["a", "b", "c"]) == []
    assert batcher.add(["d", "e"]) == [["a", "b", "c", "d"]]
    assert batcher.add(["f", "g", "h", "i", "j", "k"]) == [["e", "f", "g", "h"]]
    assert batcher.flush() == [["i", "j", "k"]]
    assert batcher.flush() == []
    with pytest.raises(ValueError, match="batch size"):
        Batcher(0)


def test_key_matcher_streams_like_match_to_keys() -> None:
    boxes = {"p1": [[1.0, 2, 3, 4]], "p2": [], "images/p3.png": [[5.0, 6, 7, 8]], "p4.dcm": [[0.0, 0, 1, 1]]}
    keys = ["images/p1.png", "images/p3.png", "other/p1.png", "p2.dcm", "images/p4.png", "images/p5.png"]
    whole = match_to_keys(boxes, keys)
    matcher = KeyMatcher(boxes)
    streamed = {**matcher.match(keys[:2]), **matcher.match(keys[2:4]), **matcher.match(keys[4:])}
    assert streamed == whole
    assert "other/p1.png" not in streamed  # the first key listed for a stem takes it, even in a later chunk
    assert matcher.matched == len(whole) == 4


class FakeQueue:
    """A queue drained by ``drain`` messages per poll (the workers), filled by what the test publishes."""

    def __init__(self, length: int, drain: int) -> None:
        self.len, self.drain, self.polls = length, drain, 0

    def length(self) -> int:
        return self.len

    def sleep(self, _: float) -> None:
        self.polls += 1
        self.len = max(0, self.len - self.drain)


def test_backpressure_pauses_above_high_and_resumes_at_low() -> None:
    queue = FakeQueue(length=3, drain=7)
    bp = Backpressure(queue.length, high=20, low=10, sleep=queue.sleep, clock=lambda: 0.0)
    assert bp.room() == 17 and bp.pauses == 0  # room below the limit: publish at most this many
    queue.len = 20
    room = bp.room()  # full: waits until drained to <= 10 (20 -> 13 -> 6)
    assert queue.polls == 2 and queue.len == 6 and room == 14 and bp.pauses == 1
    assert bp.max_seen == 20


def test_backpressure_never_lets_the_queue_exceed_high() -> None:
    queue = FakeQueue(length=0, drain=1)
    bp = Backpressure(queue.length, high=10, sleep=queue.sleep, clock=lambda: 0.0)
    published, peak = 0, 0
    while published < 200:
        room = bp.room()
        step = min(room, 7)  # a publisher sends at most `room`
        queue.len += step
        published += step
        peak = max(peak, queue.len)  # the workers only drain while the producer waits
    assert peak <= 10 and bp.pauses > 0


@pytest.mark.parametrize("high,low", [(0, None), (5, 6), (5, -1)])
def test_backpressure_rejects_bad_limits(high: int, low: int | None) -> None:
    with pytest.raises(ValueError, match="water mark"):
        Backpressure(lambda: 0, high=high, low=low)
