"""Every statement on the producer's and the workers' hot paths, planned at 100,000 images (issue 24).

A run of 100,000 images (tests/db/plans.py) on the real PostgreSQL with statistics *stale* (no ANALYZE after the
inserts, autovacuum off: a run being registered) and *fresh* (after ANALYZE), and on SQLite without and with
``ANALYZE``. Each case calls the real function in a rolled-back transaction, takes the SQL it sent and asks the
server for the plan: no table of the run is read whole (no ``Seq Scan``; SQLite: no ``SCAN``), and on PostgreSQL
every index used is one meant for the statement — for statements that name images by key or id, the unique
``(run_id, key)`` index and the primary key, never ``ix_images_run_status_progress`` on ``run_id`` alone with the
list as a filter over the whole run (issue 24's 60-95 s ``mark_published``).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from pixelperfect.db import bulk, control, repo, segs
from pixelperfect.db.models import utcnow
from pixelperfect.db.session import _ENGINES
from tests.db import plans
from tests.db.plans import BigRun

pytestmark = pytest.mark.integration

KEYS = {"uq_images_run_key", "images_pkey"}  # by key: one unique-index lookup per key, then the primary key
IDS = {"images_pkey"}
RUN = {"ix_images_run_status_progress"}  # statements over the run's rows of one status, by design
SEGMENTS_RUN = {"ix_segments_run_variant", "ix_segments_run_dice", "ix_segments_run_score", "segments_pkey"}
OWNER, WORKER = "msg-1875", "tok@host:1"  # the lease of images 60002, 60012, ... (plans.build)


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[Session, BigRun], Any]
    allowed: frozenset[str]  # PostgreSQL: the indexes this statement may use (empty: it reads no big table)
    swap_run: bool = False  # captured on the tiny run (all of its statements), planned on the big one
    #: over a whole run by design (cancel, delete, ...): with fresh statistics that say the run is nearly all of the
    #: table, reading the table whole is the right plan; with stale ones it must still be an index on the run
    run_wide: bool = False


def _keys(a: int, b: int) -> list[str]:
    return plans.keys(plans.BigRun("", "", ""), range(a, b))


@functools.lru_cache(maxsize=8)
def _all_ids(url: str) -> tuple[int, ...]:
    return tuple(plans.image_ids(plans.BigRun(url, "", ""), range(1, plans.N_IMAGES + 1)))


def _ids(run: BigRun, a: int, b: int) -> list[int]:
    every = _all_ids(run.url)
    return [every[g - 1] for g in range(a, b)]


def _cutoff() -> Any:
    return utcnow() - timedelta(hours=1)


CASES = [
    # the producer
    Case(
        "publish stamp (1,600 keys)",
        lambda s, r: control.mark_published(s, run_id=r.run_id, keys=_keys(50_001, 51_601)),
        frozenset(KEYS),
    ),
    Case(
        "registration, resumed keys (found by key, stamped by id)",
        lambda s, r: bulk.register_images(
            s,
            run_id=r.run_id,
            keys=_keys(40_001, 50_001),
            unpublished_only=True,
            published_at=utcnow(),
            unpublished_since=utcnow() - timedelta(days=3650),  # every stamp of the fixture: all resumed, restamped
        ),
        frozenset(KEYS),
    ),
    Case(
        "labelled (annotations)",
        lambda s, r: repo.mark_labelled(s, run_id=r.run_id, keys=_keys(30_001, 31_601)),
        frozenset(KEYS),
    ),
    # a worker's batch
    Case(
        "lease claim (32 keys)",
        lambda s, r: control.claim(
            s, run_id=r.run_id, keys=_keys(60_001, 60_033), owner="msg-new", worker="tok@host:2", ttl_s=3600
        ),
        frozenset(KEYS),
    ),
    Case(
        "cancelled run, worker's keys",
        lambda s, r: control.cancel_images(s, run_id=r.run_id, keys=_keys(60_001, 60_033)),
        frozenset(KEYS),
    ),
    Case(
        "lease renew",
        lambda s, r: control.renew(s, image_ids=_ids(r, 60_002, 60_100), owner=OWNER, ttl_s=3600, worker=WORKER),
        frozenset(IDS),
    ),
    Case(
        "fence (held, FOR UPDATE)",
        lambda s, r: control.held(s, image_ids=_ids(r, 60_002, 60_100), owner=OWNER, worker=WORKER),
        frozenset(IDS),
    ),
    Case(
        "lease release by ids",
        lambda s, r: control.release(s, run_id=r.run_id, owner=OWNER, image_ids=_ids(r, 60_002, 60_100), worker=WORKER),
        frozenset(IDS),
    ),
    Case(
        "lease release by keys",
        lambda s, r: control.release(s, run_id=r.run_id, owner=OWNER, keys=_keys(60_001, 60_033)),
        frozenset(KEYS),
    ),
    Case(
        "model-work insert",
        lambda s, r: control.record_model_work(s, run_id=r.run_id, image_ids=_ids(r, 60_001, 60_033), worker="host:2"),
        frozenset(),
    ),
    Case(
        "images by key",
        lambda s, r: repo.images_by_key(s, run_id=r.run_id, keys=_keys(60_001, 60_033)),
        frozenset(KEYS),
    ),
    Case(
        "SEG rows of a batch",
        lambda s, r: segs.missing_segs(s, run_id=r.run_id, image_ids=_ids(r, 60_001, 60_033)),
        frozenset(IDS | {"uq_segments_image_variant_prompt", "uq_seg_objects_image_variant"}),
    ),
    # the orphan sweep
    Case(
        "sweep candidates",
        lambda s, r: control.orphan_candidates(s, published_before=_cutoff(), limit=1000),
        frozenset(RUN | IDS),  # in id order: the primary key walked while the run is nearly all the table
        run_wide=True,
    ),
    Case(
        "sweep re-stamp",
        lambda s, r: control.mark_republished(s, image_ids=_ids(r, 60_001, 61_001), published_before=_cutoff()),
        frozenset(IDS),
    ),
    # run control
    Case("cancel", lambda s, r: control.cancel_run(s, run_id=r.run_id), frozenset(RUN), run_wide=True),
    Case("resume", lambda s, r: control.resume_run(s, run_id=r.run_id), frozenset(RUN), run_wide=True),
    Case("live leases", lambda s, r: control.live_leases(s, run_id=r.run_id), frozenset(RUN), run_wide=True),
    Case(
        "retry selection",
        lambda s, r: repo.keys_with_status(s, run_id=r.run_id, statuses=["failed"], reason="truncated"),
        frozenset(RUN),
        run_wide=True,
    ),
    Case(
        "retry requeue (keys)",
        lambda s, r: repo.requeue(s, run_id=r.run_id, keys=_keys(1, 20_001)[::10]),
        frozenset(KEYS),
    ),
    Case(
        "requeue by reason",
        lambda s, r: control.requeue_failed(s, run_id=r.run_id, reason="truncated"),
        frozenset(RUN),
        run_wide=True,
    ),
    Case(
        "delete: mask keys page",
        lambda s, r: control.mask_keys_page(s, run_id=r.run_id, after_id=0, limit=1000),
        frozenset(SEGMENTS_RUN),
        run_wide=True,
    ),
    Case(
        "delete: chunks",
        lambda s, r: control.delete_rows_chunk(s, run_id=r.tiny_run_id),
        frozenset(
            SEGMENTS_RUN
            | RUN
            | IDS
            | {"ix_model_work_run", "model_work_pkey", "annotations_pkey", "uq_annotations_run_key_index"}
        ),
        run_wide=True,
        swap_run=True,
    ),
]


@pytest.fixture(scope="module", params=["postgresql-stale", "postgresql-fresh", "sqlite-stale", "sqlite-fresh"])
def big_run(
    request: pytest.FixtureRequest, pg_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BigRun]:
    dialect, stats = request.param.split("-")
    if dialect == "sqlite":
        path = Path(tmp_path_factory.mktemp("plans")) / "big.db"
        url = f"sqlite:///{path}"
        yield plans.build(url, dialect, stats)
        _forget(url)
        return
    name = f"pp_plans_{secrets.token_hex(4)}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield plans.build(url, dialect, stats)
    finally:
        _forget(url)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _forget(url: str) -> None:
    for key, engine in list(_ENGINES.items()):
        if key[1] == url:
            engine.dispose()
            del _ENGINES[key]


def _swap(params: Any, old: int, new: int) -> Any:
    if isinstance(params, dict):
        return {k: new if v == old and not isinstance(v, bool) else v for k, v in params.items()}
    return type(params)(new if v == old and not isinstance(v, bool) else v for v in params)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hot_statement_plan(big_run: BigRun, case: Case) -> None:
    _all_ids(big_run.url)  # the test's own look-up of ids, before the capture
    statements = plans.captured(big_run, lambda s: case.call(s, big_run))
    statements = [(q, p) for q, p in statements if "pp_register" not in q]  # the producer's temp table: its session's
    if case.swap_run:
        statements = [(q, _swap(p, big_run.tiny_run_id, big_run.run_id)) for q, p in statements]
    found = list(plans.explain(big_run, statements))
    assert found, f"{case.name}: no statement captured"
    for plan in found:
        where = f"{case.name} [{big_run.dialect}, {big_run.stats} statistics]: {plan.statement[:300]}\n{plan.text}"
        if not (case.run_wide and big_run.stats == "fresh"):
            assert not plan.seq_scans, f"whole-table scan of {plan.seq_scans} in {where}"
        if big_run.dialect == "postgresql":
            wrong = set(plan.indexes) - case.allowed - {"runs_pkey", "uq_runs_name", "runs_name_key"}
            assert not wrong, f"index {sorted(wrong)} is not one meant for {where}"
    if big_run.dialect == "postgresql" and case.allowed and not (case.run_wide and big_run.stats == "fresh"):
        used = {i for plan in found for i in plan.indexes}
        assert used & case.allowed, f"{case.name}: none of {sorted(case.allowed)} used"


def test_the_check_sees_a_whole_run_scan(big_run: BigRun) -> None:
    """The assertions above can fail: the statement of issue 24 (``run_id = … AND key IN (…)``), planned on stale
    statistics, reads the whole run through ``run_id`` alone; and a filter on an unindexed column is a full scan."""
    keys = "', '".join(_keys(50_001, 51_601))
    stmt = f"UPDATE images SET published_at = CURRENT_TIMESTAMP WHERE run_id = {big_run.run_id} AND key IN ('{keys}')"
    plan = next(plans.explain(big_run, [(stmt, {} if big_run.dialect == "postgresql" else ())]))
    if big_run.dialect == "postgresql" and big_run.stats == "stale":
        assert set(plan.indexes) - KEYS == RUN, plan.text
    full = next(plans.explain(big_run, [("SELECT count(*) FROM images WHERE width > 5", {} if big_run.dialect ==
                                         "postgresql" else ())]))  # fmt: skip
    assert full.seq_scans == ["images"] or full.indexes == [], full.text
    assert full.seq_scans, full.text
