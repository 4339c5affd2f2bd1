"""DICOM-SEG output of a run (``--output png,dicom-seg``), on the worker's upload side, never on the model thread.

Per image and variant one job decodes the variant's mask PNGs (1 ms each), builds the SEG
(:func:`~pixelperfect.pipeline.output.dicomseg.build_seg`, ~13 ms for 1024² and two disjoint segments on an idle core)
and stores it at
``STORE_URL/<run>/seg/<image key>/<variant>.dcm``. A SEG that cannot be built or stored does not fail the image:
its masks and rows are written, the image is ``done``, and the SEG row records ``seg_error``
(``pixelperfect retry RUN --seg`` rebuilds it from the stored masks). After the batch, SEGs go to the run's
archive (``--stow-to``: STOW-RS or C-STORE, through the target store's ``store``) in groups of :data:`STOW_BATCH`;
what the archive refuses is recorded per instance
(``stow_status = failed``) and ``pixelperfect retry RUN`` sends it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pixelperfect.pipeline.output.dicomseg import (
    SegAlgorithm,
    SegBuildError,
    build_seg,
    decode_mask_png,
    read_source_header,
)
from pixelperfect.pipeline.output.dicomsr import SegmentMeasures, build_sr
from pixelperfect.storage import ObjectStore, join_key, validate_key
from pixelperfect.version import CODE_VERSION

log = logging.getLogger(__name__)

#: Threads building SEGs per worker process (see :func:`seg_pool`).
SEG_THREADS = 1
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()
#: SEG objects per STOW-RS request or C-STORE association (a 1024² SEG of two segments is ~260 KiB, so a request
#: stays a few MiB).
STOW_BATCH = 16


@dataclass
class SegOutcome:
    """One image and variant's SEG: stored (``url``, ``sop_uid``) or not (``error``); ``data`` is kept only until
    the STOW-RS step."""

    image_id: int
    variant: str
    segments: int
    url: str | None = None
    sop_uid: str | None = None
    error: str | None = None
    data: bytes | None = None
    stow_status: str | None = None
    stow_error: str | None = None
    seconds: float = 0.0  # building and storing it (wall time on the SEG thread)
    # its TID 1500 SR (--output png,dicom-seg,dicom-sr): built after the SEG, from it; None fields: not attempted
    sr_wanted: bool = False
    sr_url: str | None = None
    sr_uid: str | None = None
    sr_error: str | None = None
    sr_data: bytes | None = None
    sr_stow_status: str | None = None
    sr_stow_error: str | None = None

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "image_id": self.image_id,
            "variant": self.variant,
            "segments": self.segments,
            "object_key": self.url,
            "sop_instance_uid": self.sop_uid,
            "seg_error": self.error,
        }
        if self.stow_status is not None:
            row.update(stow_status=self.stow_status, stow_error=self.stow_error)
        if self.sr_wanted:
            row.update(sr_key=self.sr_url, sr_sop_instance_uid=self.sr_uid, sr_error=self.sr_error)
            if self.sr_stow_status is not None:
                row.update(sr_stow_status=self.sr_stow_status, sr_stow_error=self.sr_stow_error)
        return row


def wants_seg(run: Any) -> bool:
    return "dicom-seg" in getattr(run, "outputs", ("png",))


def wants_sr(run: Any) -> bool:
    return "dicom-sr" in getattr(run, "outputs", ("png",))


def sr_key(run_name: str, image_key: str, variant: str) -> str:
    """``<run>/sr/<image key>/<variant>.dcm`` under the run's store (deterministic)."""
    return validate_key(join_key(run_name, "sr", image_key, f"{variant}.dcm"))


def seg_key(run_name: str, image_key: str, variant: str) -> str:
    """``<run>/seg/<image key>/<variant>.dcm`` under the run's store (deterministic)."""
    return validate_key(join_key(run_name, "seg", image_key, f"{variant}.dcm"))


def algorithm(run: Any, variant: str) -> SegAlgorithm:
    """Who made a run's objects: the run's model, checkpoint, code version (``runs.code_version``: the code that
    made the masks, else this process's) and name, research use unless the run was submitted without it."""
    version = getattr(run, "code_version", None) or CODE_VERSION
    research = bool(getattr(run, "research_use", True))
    return SegAlgorithm(run.model, run.checkpoint_sha256, variant, version, run.name, research)


def measures_of(rows: Sequence[Any]) -> list[SegmentMeasures]:
    """SR measurements from segment records or ``MEASURES`` dicts (prompt order)."""
    fields = ("prompt_index", "score", "stability", "consistency_std", "consistency_iou", "dice", "hd95",
              "surface_unit")  # fmt: skip
    get = (lambda r, f: r.get(f)) if rows and isinstance(rows[0], dict) else getattr
    return [SegmentMeasures(**{f: get(r, f) for f in fields}) for r in rows]


def build_and_store(
    run: Any,
    store: ObjectStore,
    image_key: str,
    image_id: int,
    source: Any,
    variant: str,
    pngs: Sequence[bytes],
    measures: Sequence[SegmentMeasures] | None = None,
    spacing: tuple[float, float] | None = None,
) -> SegOutcome:
    """Build one SEG from mask PNGs (prompt order) on ``source`` (DICOM bytes, or the header dataset of
    :func:`~pixelperfect.pipeline.output.dicomseg.read_source_header`) and store it; then, for a run with
    ``dicom-sr`` and ``measures``, its TID 1500 SR from the SEG. Never raises (the outcome carries the errors: an SR
    that fails leaves the SEG stored)."""
    out = SegOutcome(image_id, variant, len(pngs), sr_wanted=wants_sr(run))
    started = time.perf_counter()
    data = None
    try:
        header = read_source_header(source) if isinstance(source, bytes) else source
        masks = [decode_mask_png(p) for p in pngs]
        out.sop_uid, data = build_seg(header, masks, algorithm(run, variant), run=run.name, image_key=image_key)
        key = seg_key(run.name, image_key, variant)
        store.put(key, data, "application/dicom")
        out.url, out.data = store.url_for(key), data
    except SegBuildError as exc:
        out.sop_uid, out.error = None, str(exc)
    except Exception as exc:  # a store that refuses the object: the masks are still valid
        out.sop_uid, out.error = None, f"{type(exc).__name__}: {exc}"
    if out.sr_wanted:
        if out.error or data is None:
            out.sr_error = f"no SEG to report on: {out.error}"
        elif not measures:
            out.sr_error = "no measurements of the segments"
        else:
            _build_sr(run, store, image_key, header, data, variant, measures, spacing, out)
    out.seconds = time.perf_counter() - started
    if out.error:
        log.warning("run %s: no DICOM-SEG for image %d variant %s: %s", run.name, image_id, variant, out.error)
    elif out.sr_error:
        log.warning("run %s: no DICOM SR for image %d variant %s: %s", run.name, image_id, variant, out.sr_error)
    return out


def _build_sr(
    run: Any,
    store: ObjectStore,
    image_key: str,
    header: Any,
    seg_data: bytes,
    variant: str,
    measures: Sequence[SegmentMeasures],
    spacing: tuple[float, float] | None,
    out: SegOutcome,
) -> None:
    import io

    import pydicom

    try:
        seg = pydicom.dcmread(io.BytesIO(seg_data))
        out.sr_uid, data = build_sr(header, seg, measures, algorithm(run, variant), image_key=image_key,
                                    spacing=spacing)  # fmt: skip
        key = sr_key(run.name, image_key, variant)
        store.put(key, data, "application/dicom")
        out.sr_url, out.sr_data = store.url_for(key), data
    except SegBuildError as exc:  # SrBuildError too
        out.sr_uid, out.sr_error = None, str(exc)
    except Exception as exc:
        out.sr_uid, out.sr_error = None, f"{type(exc).__name__}: {exc}"


def seg_pool() -> ThreadPoolExecutor:
    """This process's SEG thread (created on first use in it, like the worker's other pools)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(SEG_THREADS, thread_name_prefix="pp-seg"))
        return _POOL[1]


def submit_segs(run: Any, store: ObjectStore, fetched: Any, result: Any) -> list[Future[None]]:
    """Queue the SEG jobs of one finished image (post-processing thread): keep the source's header (not its
    pixels) and the variant's mask PNGs on ``fetched.seg_jobs``; :func:`finish_segs` builds them once the model
    is done with the batch. Returns no upload future: nothing is built while the model runs.

    Why not beside the model: building a SEG is Python (highdicom, pydicom) holding the GIL, and every torch op
    of the model thread releases and re-takes the GIL, waiting up to the switch interval (5 ms) each time another
    thread computes: measured on sam_tiny, SEGs built beside the model doubled its time (P10 2.3), for ~13 ms of
    SEG work per object. After the model they cost their own time only.
    """
    source = getattr(fetched, "source", None)
    if source is None or not wants_seg(run):
        return []
    fetched.source = None
    by_variant: dict[str, list[tuple[int, bytes, Any]]] = defaultdict(list)
    for seg in result.segments:
        by_variant[seg.variant].append((seg.prompt_index, seg.mask_png, seg))
    try:
        header: Any = read_source_header(source)
    except SegBuildError as exc:  # not DICOM: every variant records why, no job
        fetched.seg_outcomes.extend(
            SegOutcome(
                fetched.todo.image_id,
                v,
                len(i),
                error=str(exc),
                sr_wanted=wants_sr(run),
                sr_error=f"no SEG to report on: {exc}" if wants_sr(run) else None,
            )
            for v, i in by_variant.items()
        )
        return []
    spacing = getattr(getattr(fetched, "input", None), "spacing", None)
    jobs = []
    for v, items in by_variant.items():
        items.sort(key=lambda item: item[0])
        jobs.append((store, header, v, [png for _, png, _ in items], measures_of([r for _, _, r in items]), spacing))
    fetched.seg_jobs = jobs
    return []


def stow(target: Any, outcomes: Sequence[SegOutcome]) -> None:
    """Send the stored SEGs (and SRs) of ``outcomes`` to ``target`` (an archive's store: its ``store(datasets)``
    sends DICOM objects and returns the refused ones, STOW-RS or C-STORE) in groups of :data:`STOW_BATCH`,
    setting each outcome's ``stow_status`` / ``sr_stow_status`` (``stored`` | ``failed``) and error; frees the
    bytes. A SEG goes before its SR (an archive may check the SR's references)."""
    import io

    import pydicom

    items: list[tuple[SegOutcome, str, bytes, str]] = []
    for o in outcomes:
        if o.data is not None and o.sop_uid:
            items.append((o, "seg", o.data, o.sop_uid))
        if o.sr_data is not None and o.sr_uid:
            items.append((o, "sr", o.sr_data, o.sr_uid))
    for start in range(0, len(items), STOW_BATCH):
        group = items[start : start + STOW_BATCH]
        try:
            refused = target.store([pydicom.dcmread(io.BytesIO(data)) for _, _, data, _ in group])
        except Exception as exc:  # the request as a whole failed after its retries
            refused = {uid: f"{type(exc).__name__}: {exc}" for _, _, _, uid in group}
        for o, what, _, uid in group:
            why = refused.get(uid)
            status = ("failed", why) if why else ("stored", None)
            if what == "seg":
                o.stow_status, o.stow_error = status
            else:
                o.sr_stow_status, o.sr_stow_error = status
    for o in outcomes:
        o.data = o.sr_data = None


def finish_segs(rt: Any, run: Any, fetched: Sequence[Any]) -> list[dict[str, Any]]:
    """After a batch's model work and uploads: build and store its queued SEGs on the SEG thread, STOW-RS them
    when the run has a target; add each image's SEG seconds to its ``seg`` stage timing and return the
    ``seg_objects`` rows."""
    pool = seg_pool()
    futures = [
        pool.submit(build_and_store, run, store, f.key, f.todo.image_id, header, variant, pngs, measures, spacing)
        for f in fetched
        for store, header, variant, pngs, measures, spacing in getattr(f, "seg_jobs", [])
    ]
    outcomes = [o for f in fetched for o in getattr(f, "seg_outcomes", [])] + [fut.result() for fut in futures]
    target = getattr(run, "stow_to", None)
    if target and outcomes:
        stow(rt.store(target), outcomes)
    seconds: dict[int, float] = defaultdict(float)
    for o in outcomes:
        o.data = o.sr_data = None
        seconds[o.image_id] += o.seconds
    for f in fetched:
        f.seg_jobs = []
        if f.todo.image_id in seconds:
            f.timings["seg"] = seconds[f.todo.image_id]
    return [o.row() for o in outcomes]


def rebuild_error(image_id: int, variant: str, exc: BaseException) -> SegOutcome:
    return SegOutcome(image_id, variant, 0, error=f"{type(exc).__name__}: {exc}")


__all__ = [
    "STOW_BATCH", "SegBuildError", "SegOutcome", "build_and_store", "finish_segs", "seg_key", "sr_key", "stow",
]  # fmt: skip
