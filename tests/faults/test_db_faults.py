"""Database faults: the worker's PostgreSQL connections are terminated mid-transaction (and idle ones in its pool
now and then); the batch is retried, nothing is written twice. Engines are per process: a forked pool process
never uses its parent's connections."""

from __future__ import annotations

import os
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from pixelperfect.db.migrate import upgrade
from tests.faults.conftest import FaultBed
from tests.faults.runs import audit_run, log_count, pool_children, submit_run, wait_drained

pytestmark = [pytest.mark.integration]


class Terminator(threading.Thread):
    """Holds a SHARE lock on ``segments`` so the worker's upsert waits inside its transaction, then terminates
    the waiting backend — a connection dropped mid-batch, ``mid_transaction`` times — and, every second, the
    idle connections of the worker's pool (which ``pool_pre_ping`` must notice)."""

    def __init__(self, url: str, mid_transaction: int = 3) -> None:
        super().__init__(daemon=True)
        self.url, self.wanted = url, mid_transaction
        self.mid, self.idle = 0, 0
        self.app_names: set[str] = set()
        self.stop, self.locked = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        locker = create_engine(self.url).connect()
        lock = locker.begin()
        locker.execute(text("LOCK TABLE segments IN SHARE MODE"))
        self.locked.set()
        others = "datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'pixelperfect-%'"
        last_idle = time.monotonic()
        with admin.connect() as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    text(f"SELECT pid, application_name, state, wait_event_type FROM pg_stat_activity WHERE {others}")
                ).all()
                self.app_names.update(r.application_name for r in rows)
                for r in rows:
                    waiting = self.mid < self.wanted and r.wait_event_type == "Lock"
                    if waiting and conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": r.pid}).scalar():
                        self.mid += 1
                if self.mid >= self.wanted and lock.is_active:
                    lock.commit()  # let the batches through from now on
                if time.monotonic() - last_idle > 1.0:
                    last_idle = time.monotonic()
                    for r in rows:
                        if (
                            r.state == "idle"
                            and conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": r.pid}).scalar()
                        ):
                            self.idle += 1
                time.sleep(0.05)
        if lock.is_active:
            lock.rollback()
        locker.close()
        admin.dispose()


def test_terminated_backends_mid_batch_are_retried_without_duplicates(
    bed: FaultBed,
) -> None:
    t0 = time.monotonic()
    archive = bed.archive(n=12)
    stack = bed.stack(task_max_retries=5)
    worker = bed.start_worker(stack.env())
    upgrade(bed.pg_url)
    terminator = Terminator(bed.pg_url, mid_transaction=3)
    terminator.start()
    assert terminator.locked.wait(10), terminator.error  # every batch's upsert now waits inside its transaction
    submit_run(stack, archive, "dbfaults", batch_size=3, variants=("raw", "clahe"))
    children: set[int] = set()
    deadline = time.monotonic() + 90
    while terminator.mid < 3 and time.monotonic() < deadline and terminator.is_alive():
        children.update(pool_children(worker.proc.pid))
        time.sleep(0.1)
    status = wait_drained(bed.pg_url, "dbfaults", [worker], timeout=90)
    children.update(pool_children(worker.proc.pid))
    terminator.stop.set()
    terminator.join(10)
    assert terminator.error is None, terminator.error
    assert terminator.mid == 3, "three connections were terminated inside a batch's transaction"

    # the database error as the batch reports it: counted toward the run's pause (issue 31) as a StoreFailure that
    # names the database and carries the driver's OperationalError
    retried = r"failed \(StoreFailure: cannot write to the database .*OperationalError.*\); retry \d+ in"
    retries = log_count(worker.log, retried)
    assert retries >= 3, worker.log.read_text()[-3000:]
    audit = audit_run(stack, bed.s3, "dbfaults", n_variants=2)
    assert status == {"queued": 0, "done": 12, "failed": 0}, (status, audit.failures)
    assert audit.lost == 0 and audit.duplicates == 0, audit
    assert audit.missing_objects == [] and audit.bad_masks == []
    # every worker connection was opened by a pool process, none by the main process (engines made after fork)
    worker_pids = {int(n.rsplit("-", 1)[1]) for n in terminator.app_names} - {os.getpid()}
    assert worker_pids and worker.proc.pid not in worker_pids
    assert worker_pids <= children, (worker_pids, children)
    bed.table.append(
        (
            "database faults (pg_terminate_backend)",
            12,
            f"{terminator.mid} backends killed mid-transaction, {terminator.idle} idle; {retries} task retries",
            audit.lost,
            audit.duplicates,
            time.monotonic() - t0,
        )
    )
