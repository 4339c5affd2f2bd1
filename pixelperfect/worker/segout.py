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
from pixelperfect.storage import ObjectStore, join_key, validate_key
from pixelperfect.version import __version__

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
        return row


def wants_seg(run: Any) -> bool:
    return "dicom-seg" in getattr(run, "outputs", ("png",))


def seg_key(run_name: str, image_key: str, variant: str) -> str:
    """``<run>/seg/<image key>/<variant>.dcm`` under the run's store (deterministic)."""
    return validate_key(join_key(run_name, "seg", image_key, f"{variant}.dcm"))


def algorithm(run: Any, variant: str) -> SegAlgorithm:
    return SegAlgorithm(run.model, run.checkpoint_sha256, variant, __version__)


def build_and_store(
    run: Any, store: ObjectStore, image_key: str, image_id: int, source: Any, variant: str, pngs: Sequence[bytes]
) -> SegOutcome:
    """Build one SEG from mask PNGs (prompt order) on ``source`` (DICOM bytes, or the header dataset of
    :func:`~pixelperfect.pipeline.output.dicomseg.read_source_header`) and store it; never raises (the outcome carries
    the error)."""
    out = SegOutcome(image_id, variant, len(pngs))
    started = time.perf_counter()
    try:
        masks = [decode_mask_png(p) for p in pngs]
        out.sop_uid, data = build_seg(source, masks, algorithm(run, variant), run=run.name, image_key=image_key)
        key = seg_key(run.name, image_key, variant)
        store.put(key, data, "application/dicom")
        out.url, out.data = store.url_for(key), data
    except SegBuildError as exc:
        out.sop_uid, out.error = None, str(exc)
    except Exception as exc:  # a store that refuses the object: the masks are still valid
        out.sop_uid, out.error = None, f"{type(exc).__name__}: {exc}"
    out.seconds = time.perf_counter() - started
    if out.error:
        log.warning("run %s: no DICOM-SEG for image %d variant %s: %s", run.name, image_id, variant, out.error)
    return out


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
    by_variant: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for seg in result.segments:
        by_variant[seg.variant].append((seg.prompt_index, seg.mask_png))
    try:
        header: Any = read_source_header(source)
    except SegBuildError as exc:  # not DICOM: every variant records why, no job
        fetched.seg_outcomes.extend(
            SegOutcome(fetched.todo.image_id, v, len(i), error=str(exc)) for v, i in by_variant.items()
        )
        return []
    jobs = [(store, header, v, [png for _, png in sorted(items)]) for v, items in by_variant.items()]
    fetched.seg_jobs = jobs
    return []


def stow(target: Any, outcomes: Sequence[SegOutcome]) -> None:
    """Send the stored SEGs of ``outcomes`` to ``target`` (an archive's store: its ``store(datasets)`` sends DICOM
    objects and returns the refused ones, STOW-RS or C-STORE) in groups of :data:`STOW_BATCH`,
    setting each outcome's ``stow_status`` (``stored`` | ``failed``) and ``stow_error``; frees ``data``."""
    import io

    import pydicom

    ready = [o for o in outcomes if o.data is not None and o.sop_uid]
    for start in range(0, len(ready), STOW_BATCH):
        group = ready[start : start + STOW_BATCH]
        try:
            refused = target.store([pydicom.dcmread(io.BytesIO(o.data or b"")) for o in group])
        except Exception as exc:  # the request as a whole failed after its retries
            refused = {o.sop_uid or "": f"{type(exc).__name__}: {exc}" for o in group}
        for o in group:
            why = refused.get(o.sop_uid or "")
            o.stow_status, o.stow_error = ("failed", why) if why else ("stored", None)
    for o in outcomes:
        o.data = None


def finish_segs(rt: Any, run: Any, fetched: Sequence[Any]) -> list[dict[str, Any]]:
    """After a batch's model work and uploads: build and store its queued SEGs on the SEG thread, STOW-RS them
    when the run has a target; add each image's SEG seconds to its ``seg`` stage timing and return the
    ``seg_objects`` rows."""
    pool = seg_pool()
    futures = [
        pool.submit(build_and_store, run, store, f.key, f.todo.image_id, header, variant, pngs)
        for f in fetched
        for store, header, variant, pngs in getattr(f, "seg_jobs", [])
    ]
    outcomes = [o for f in fetched for o in getattr(f, "seg_outcomes", [])] + [fut.result() for fut in futures]
    target = getattr(run, "stow_to", None)
    if target and outcomes:
        stow(rt.store(target), outcomes)
    seconds: dict[int, float] = defaultdict(float)
    for o in outcomes:
        o.data = None
        seconds[o.image_id] += o.seconds
    for f in fetched:
        f.seg_jobs = []
        if f.todo.image_id in seconds:
            f.timings["seg"] = seconds[f.todo.image_id]
    return [o.row() for o in outcomes]


def rebuild_error(image_id: int, variant: str, exc: BaseException) -> SegOutcome:
    return SegOutcome(image_id, variant, 0, error=f"{type(exc).__name__}: {exc}")


__all__ = ["STOW_BATCH", "SegBuildError", "SegOutcome", "build_and_store", "finish_segs", "seg_key", "stow"]
