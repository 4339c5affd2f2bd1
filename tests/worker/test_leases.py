"""The fence of a batch's final transaction, on both dialects: when the same message runs twice at once (a
redelivery after the visibility timeout or a lost broker connection), the execution that took the images last
writes them and the other one writes nothing — each image is done once (``attempts`` 1), its leases untouched by
the loser."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelperfect.db import repo
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.records import ImageResult
from pixelperfect.worker import leases
from pixelperfect.worker.fetch import FetchedImage, ImageTodo
from pixelperfect.worker.persist import BatchSummary, persist_batch
from tests.db.test_control import _run

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    from pixelperfect.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'fence.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    return str(url)


def persist(url: str, hold: leases.Hold, host: str) -> BatchSummary:
    summary = BatchSummary(hold.run_id)
    fetched = [FetchedImage(ImageTodo(key, image_id, gt), fields={"width": 8, "height": 8}) for image_id, key, gt in
               hold.todo]  # fmt: skip
    results = {f.key: ImageResult(f.key, [], {"model": 0.1}) for f in fetched}
    persist_batch(url, summary, fetched, results, host=host, read_s=0.0, in_transaction=hold.release, fence=hold.fence)
    return summary


def test_the_execution_holding_the_images_writes_them_and_the_other_writes_nothing(db_url: str) -> None:
    run_id = _run(db_url, keys=("a", "b", "c"))
    first = leases.acquire(db_url, run_id, ["a", "b", "c"], owner="task-1", host="w1", ttl_s=60)
    second = leases.acquire(db_url, run_id, ["a", "b"], owner="task-1", host="w2", ttl_s=60)  # delivered again
    assert [k for _, k, _ in first.todo] == ["a", "b", "c"] and [k for _, k, _ in second.todo] == ["a", "b"]

    lost = persist(db_url, first, "w1")  # the first execution finishes while the second runs: only c is its own
    assert (lost.done, lost.skipped) == (1, 2)
    assert lost.done_ids == [i for i, k, _ in first.todo if k == "c"]  # its SEGs are published for c alone
    with session_scope(db_url) as s:
        rows = repo.images_by_key(s, run_id=run_id, keys=["a", "b", "c"])
        assert {k: r.status for k, r in rows.items()} == {"a": "queued", "b": "queued", "c": "done"}
        assert rows["a"].lease_worker == second.lease_id and rows["c"].lease_owner is None  # its own released only

    won = persist(db_url, second, "w2")
    assert (won.done, won.skipped) == (2, 0) and sorted(won.done_ids) == sorted(i for i, _, _ in second.todo)
    with session_scope(db_url) as s:
        rows = repo.images_by_key(s, run_id=run_id, keys=["a", "b", "c"])
        assert {r.status for r in rows.values()} == {"done"} and {r.attempts for r in rows.values()} == {1}
        assert {r.worker_host for k, r in rows.items() if k != "c"} == {"w2"}
        assert all(r.lease_owner is None for r in rows.values())


def test_renewal_reports_a_lease_taken_over_by_a_second_delivery(db_url: str) -> None:
    run_id = _run(db_url, keys=("a",))
    first = leases.acquire(db_url, run_id, ["a"], owner="task-1", host="w1", ttl_s=60)
    ids = [i for i, _, _ in first.todo]
    first.before_model(ids, ids)  # still its own: the renewal holds
    leases.acquire(db_url, run_id, ["a"], owner="task-1", host="w2", ttl_s=60)
    from pixelperfect.db import control

    with session_scope(db_url) as s:
        assert control.renew(s, image_ids=ids, owner="task-1", ttl_s=60, worker=first.lease_id) == 0
        assert control.renew(s, image_ids=ids, owner="task-1", ttl_s=60) == 1  # by owner alone: still task-1's


def test_a_fence_left_idle_by_a_vanished_worker_gives_its_rows_up_within_half_a_lease(pg_url: str) -> None:
    """A worker cut off from PostgreSQL right after its fence locked the rows (a partition; tests/partitions does it
    with real hosts): the server ends that transaction after half a lease of silence, so the redelivered message
    takes the images over instead of waiting on the lock until the heal (or two hours of TCP keepalive)."""
    import threading
    import time

    from sqlalchemy import select
    from sqlalchemy.exc import DBAPIError

    from pixelperfect.db.migrate import upgrade

    upgrade(pg_url)
    run_id = _run(pg_url, keys=("a", "b"))
    first = leases.acquire(pg_url, run_id, ["a", "b"], owner="task-1", host="w1", ttl_s=2)  # idle limit: 1 s
    second: list[leases.Hold] = []
    waited: list[float] = []

    def redelivered() -> None:
        t0 = time.monotonic()
        second.append(leases.acquire(pg_url, run_id, ["a", "b"], owner="task-1", host="w2", ttl_s=2))
        waited.append(time.monotonic() - t0)

    with pytest.raises(DBAPIError, match="idle-in-transaction timeout"), session_scope(pg_url) as session:
        assert first.fence(session) == {i for i, _, _ in first.todo}  # the rows are locked by this transaction
        thread = threading.Thread(target=redelivered, daemon=True)
        thread.start()
        thread.join(15)  # the first worker says nothing meanwhile: it is cut off
        assert not thread.is_alive(), "the redelivered claim still waits on the vanished worker's locks"
        session.execute(select(1))  # the heal: its transaction is gone
    assert [k for _, k, _ in second[0].todo] == ["a", "b"]
    assert 0.5 < waited[0] < 10  # the limit (1 s) plus the server's timer granularity, under load
    with session_scope(pg_url) as s:
        rows = repo.images_by_key(s, run_id=run_id, keys=["a", "b"])
        assert {r.lease_worker for r in rows.values()} == {second[0].lease_id}
    lost = persist(pg_url, first, "w1")  # the first worker, healed, retries its final transaction: fenced out
    assert (lost.done, lost.skipped) == (0, 2)
