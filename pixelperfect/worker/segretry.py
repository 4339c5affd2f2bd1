"""Building a run's DICOM-SEG output without the model, from the stored mask PNGs and the source instance.

``retry RUN --seg`` rebuilds the SEGs that are missing (never built, or recorded with ``seg_error``); the
``pixelperfect.build_segs`` task on queue ``seg`` builds those of the images a GPU worker just persisted
(:func:`build_segs`, the same code path, so the GPU worker never builds one); ``retry RUN`` also sends again the
SEGs its STOW-RS target refused. All run in the calling process, a few threads wide.

The source is fetched again (a WADO-RS retrieve is ~6 ms, a file or S3 read less) rather than kept in the store:
nothing to clean up, and the SEG is built from exactly the instance the PACS holds."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pixelperfect.config import Settings
from pixelperfect.db import repo
from pixelperfect.db import segs as seg_repo
from pixelperfect.db.session import session_scope
from pixelperfect.storage import ObjectStore, read_url
from pixelperfect.worker.runtime import RunSpec, Runtime, get_runtime
from pixelperfect.worker.segout import SegOutcome, build_and_store, measures_of, rebuild_error, stow, wants_sr

#: Parallel SEG rebuilds (each: one source fetch, K mask reads, one build, one put).
REBUILD_THREADS = 4


@dataclass
class SegRepair:
    rebuilt: int = 0
    failed: int = 0
    stowed: int = 0
    stow_failed: int = 0
    sr_failed: int = 0  # SRs that could not be built (their SEG may be fine)


def _run(settings: Settings, name: str) -> RunSpec:
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=name)
        if row is None:
            raise LookupError(f"no run named {name!r} in the database")
        return RunSpec.from_row(row)


def _read(store: ObjectStore, url: str) -> bytes:
    root = store.url.rstrip("/") + "/"
    return store.get(url[len(root) :]) if url.startswith(root) else read_url(url)


def rebuild_segs(name: str, settings: Settings) -> SegRepair:
    """Build, store (and STOW, when the run has a target) every missing SEG of run ``name``; record each."""
    run = _run(settings, name)
    if "dicom-seg" not in run.outputs:  # dicom-sr implies dicom-seg
        raise ValueError(f"run {name!r} was not submitted with --output png,dicom-seg")
    with session_scope(settings.database_url) as session:
        missing = seg_repo.missing_segs(session, run_id=run.id, with_sr=wants_sr(run))
    return _build(Runtime(settings), run, missing)


def build_segs(run_id: int, image_ids: list[int], rt: Runtime | None = None) -> SegRepair:
    """The ``pixelperfect.build_segs`` task's work: the missing SEGs of ``image_ids`` (done images of run
    ``run_id``), built, stored, STOWed when the run has a target, and recorded. Idempotent: a redelivered message
    finds the SEGs already stored and builds nothing. Raises on infrastructure errors (database, STOW target
    unreachable is recorded per instance instead), so Celery retries the task."""
    rt = rt or get_runtime()
    run = rt.run_spec(run_id)
    if "dicom-seg" not in run.outputs:
        return SegRepair()
    with session_scope(rt.settings.database_url) as session:
        missing = seg_repo.missing_segs(session, run_id=run.id, image_ids=image_ids, with_sr=wants_sr(run))
    return _build(rt, run, missing)


def _build(rt: Runtime, run: RunSpec, missing: list[seg_repo.MissingSeg]) -> SegRepair:
    """Build, store, STOW and record the SEGs (and SRs) of ``missing`` (:func:`~pixelperfect.db.segs.missing_segs`);
    a SEG that exists is rebuilt with its missing SR: the same UIDs, so an archive replaces it."""
    settings = rt.settings
    source, store = rt.store(run.source_url), rt.store(run.store_url)

    def one(item: seg_repo.MissingSeg) -> SegOutcome:
        try:
            data = source.get(item.key)
            pngs = [_read(store, url) for url in item.masks]
        except Exception as exc:
            out = rebuild_error(item.image_id, item.variant, exc)
            if wants_sr(run):
                out.sr_wanted, out.sr_error = True, out.error
            return out
        measures = measures_of(item.measures)
        return build_and_store(run, store, item.key, item.image_id, data, item.variant, pngs, measures, item.spacing)

    report = SegRepair()
    if not missing:
        return report
    with ThreadPoolExecutor(REBUILD_THREADS) as pool:
        outcomes = list(pool.map(one, missing))
    if run.stow_to:
        stow(rt.store(run.stow_to), outcomes)
    with session_scope(settings.database_url) as session:
        seg_repo.upsert_segs(session, run_id=run.id, rows=[o.row() for o in outcomes])
    for o in outcomes:
        report.rebuilt += o.error is None
        report.failed += o.error is not None
        report.stowed += (o.stow_status == "stored") + (o.sr_stow_status == "stored")
        report.stow_failed += (o.stow_status == "failed") + (o.sr_stow_status == "failed")
        report.sr_failed += o.sr_error is not None
    return report


def restow(name: str, settings: Settings) -> SegRepair:
    """Send again the stored SEGs of run ``name`` that its STOW-RS target refused; record the new state."""
    run = _run(settings, name)
    report = SegRepair()
    if not run.stow_to:
        return report
    with session_scope(settings.database_url) as session:
        failed = seg_repo.failed_stows(session, run_id=run.id)
    if not failed:
        return report
    import io

    import pydicom

    rt = Runtime(settings)
    store = rt.store(run.store_url)
    outcomes = []
    for image_id, variant, kind, url in failed:
        data = _read(store, url)
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        if kind == "seg":
            outcomes.append(SegOutcome(image_id, variant, 0, url=url, sop_uid=uid, data=data))
        else:
            outcomes.append(SegOutcome(image_id, variant, 0, sr_url=url, sr_uid=uid, sr_data=data))
    stow(rt.store(run.stow_to), outcomes)
    rows = []
    for o in outcomes:
        row: dict[str, object] = {"image_id": o.image_id, "variant": o.variant}
        if o.stow_status is not None:
            row.update(stow_status=o.stow_status, stow_error=o.stow_error)
        if o.sr_stow_status is not None:
            row.update(sr_stow_status=o.sr_stow_status, sr_stow_error=o.sr_stow_error)
        rows.append(row)
    with session_scope(settings.database_url) as session:
        seg_repo.upsert_segs(session, run_id=run.id, rows=rows)
    report.stowed = sum(o.stow_status == "stored" or o.sr_stow_status == "stored" for o in outcomes)
    report.stow_failed = len(outcomes) - report.stowed
    return report
