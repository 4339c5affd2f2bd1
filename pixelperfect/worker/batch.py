"""``run_batch``: fetch -> decode -> pipeline -> store masks -> persist rows. Celery and embedded mode both call it.

Per-image problems (undecodable bytes, a missing object, a bad ground-truth mask) end that image ``failed`` with a
reason and never stop the batch. Infrastructure problems (store, database, model) raise, so the caller retries
the whole batch; every write is an idempotent upsert, and a mask object is written before the row that names it.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pixelperfect.db import repo
from pixelperfect.db.models import ImageStatus
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.decode import ImageDecodeError, decode_image
from pixelperfect.pipeline.process import ImageInput, ImageResult, process_images
from pixelperfect.storage import InvalidKeyError, ObjectNotFoundError, join_key, read_url, validate_key
from pixelperfect.worker.runtime import RunSpec, Runtime, get_runtime

log = logging.getLogger(__name__)

#: Parallel downloads/uploads per worker: I/O-bound, so more threads than cores is right.
IO_THREADS = 8


@dataclass
class BatchSummary:
    run_id: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    segments: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "segments": self.segments,
        }


@dataclass
class _Fetched:
    key: str
    image_id: int
    input: ImageInput | None = None
    reason: str | None = None
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def mask_key(run: RunSpec, image_key: str, variant: str, prompt_index: int) -> str:
    """``<run>/masks/<image key>/<variant>/<prompt>.png`` under the run's store (deterministic)."""
    return validate_key(join_key(run.name, "masks", image_key, variant, f"{prompt_index}.png"))


def run_batch(run_id: int, keys: Sequence[str], runtime: Runtime | None = None) -> BatchSummary:
    """Process the images ``keys`` of run ``run_id`` (already registered as image rows)."""
    rt = runtime or get_runtime()
    run = rt.run_spec(run_id)
    summary = BatchSummary(run_id)
    with session_scope(rt.settings.database_url) as session:
        rows = repo.images_by_key(session, run_id=run_id, keys=keys)
        boxes = repo.boxes_for(session, run_id=run_id, keys=keys)
        todo = [
            (k, rows[k].id, rows[k].gt_mask_key) for k in keys if k in rows and rows[k].status != ImageStatus.done.value
        ]
    summary.skipped = len(keys) - len(todo)
    if not todo:
        return summary
    segmenter = rt.segmenter(run)  # loaded once per process; raises (-> batch retry) if the model cannot load

    with ThreadPoolExecutor(IO_THREADS) as pool:
        fetched = list(pool.map(lambda t: _fetch(rt, run, t[0], t[1], t[2], boxes.get(t[0], [])), todo))
    ok = [f for f in fetched if f.input is not None]
    results = _segment(ok, run, segmenter) if ok else {}

    uploads: dict[str, list[tuple[str, bytes]]] = {}
    for f in ok:
        result = results.get(f.key)
        if isinstance(result, ImageResult):
            f.timings.update(result.timings)
            uploads[f.key] = [
                (mask_key(run, f.key, s.row["variant"], s.row["prompt_index"]), s.mask_png) for s in result.segments
            ]
        else:
            f.reason, f.error = "segmentation_error", str(result)
    store = rt.store(run.store_url)
    with ThreadPoolExecutor(IO_THREADS) as pool:
        t0 = time.perf_counter()
        futures = {
            key: [pool.submit(store.put, mk, data, "image/png") for mk, data in items] for key, items in uploads.items()
        }
        for fs in futures.values():
            for fut in fs:
                fut.result()  # a failed upload raises: the batch is retried, no row points at a missing object
        upload_each = (time.perf_counter() - t0) / max(len(uploads), 1)

    t0 = time.perf_counter()
    host = socket.gethostname()
    with session_scope(rt.settings.database_url) as session:  # the whole batch is one transaction
        for f in fetched:
            result = results.get(f.key)
            if f.reason is None and isinstance(result, ImageResult):
                f.timings["upload"] = upload_each
                segs = [
                    {
                        **s.row,
                        "run_id": run.id,
                        "image_id": f.image_id,
                        "mask_key": store.url_for(mask_key(run, f.key, s.row["variant"], s.row["prompt_index"])),
                    }
                    for s in result.segments
                ]
                repo.mark_done(
                    session,
                    image_id=f.image_id,
                    segments=segs,
                    fields={**f.fields, "timings": _rounded(f.timings), "worker_host": host},
                )
                summary.done += 1
                summary.segments += len(segs)
            else:
                repo.mark_failed(
                    session,
                    image_id=f.image_id,
                    reason=f.reason or "unknown",
                    error=f.error or "",
                    fields={**f.fields, "worker_host": host},
                )
                summary.failed += 1
                summary.failures[f.key] = f.reason or "unknown"
    log.info(
        "run %s batch: %d done, %d failed, %d skipped, db %.3fs",
        run.name,
        summary.done,
        summary.failed,
        summary.skipped,
        time.perf_counter() - t0,
    )
    return summary


def _fetch(
    rt: Runtime, run: RunSpec, key: str, image_id: int, gt_url: str | None, boxes: list[list[float]]
) -> _Fetched:
    out = _Fetched(key, image_id)
    t0 = time.perf_counter()
    try:
        data = rt.store(run.source_url).get(key)
    except ObjectNotFoundError as exc:
        out.reason, out.error = "missing", str(exc)
        return out
    except InvalidKeyError as exc:
        out.reason, out.error = "invalid_key", str(exc)
        return out
    t1 = time.perf_counter()
    out.fields = {"content_sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    try:
        decoded = decode_image(data, key, max_pixels=rt.settings.max_pixels)
    except ImageDecodeError as exc:
        out.reason, out.error = exc.reason, str(exc)
        return out
    except Exception as exc:  # a decoder bug must not take the batch down with it
        out.reason, out.error = "decode_error", f"{key}: {type(exc).__name__}: {exc}"
        return out
    height, width = decoded.shape
    out.fields.update(width=width, height=height, meta=decoded.meta)
    gt = None
    if gt_url:
        try:
            gt = _load_gt_mask(gt_url, rt, (height, width))
        except ObjectNotFoundError as exc:
            out.reason, out.error = "gt_mask_missing", str(exc)
            return out
        except ValueError as exc:
            out.reason, out.error = "gt_mask_invalid", f"{gt_url}: {exc}"
            return out
    out.timings = {"download": t1 - t0, "decode": time.perf_counter() - t1}
    out.input = ImageInput(key=key, pixels=decoded.pixels, boxes=boxes, gt_mask=gt)
    return out


def _load_gt_mask(url: str, rt: Runtime, shape: tuple[int, int]) -> np.ndarray:
    data = read_url(url, endpoint_url=rt.settings.s3_endpoint_url)
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("ground-truth mask does not decode as an image")
    if mask.shape != shape:
        raise ValueError(f"ground-truth mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return mask > 0


def _segment(ok: list[_Fetched], run: RunSpec, segmenter: Any) -> dict[str, ImageResult | str]:
    """All images in one batched call; if that raises, image by image so one bad input fails alone."""
    inputs = [f.input for f in ok if f.input is not None]
    try:
        return {r.key: r for r in process_images(inputs, run.variants, segmenter, run.process)}
    except (MemoryError, RuntimeError) as exc:
        if "CUDA" in str(exc) or isinstance(exc, MemoryError):
            raise  # out of device memory: retry the batch, do not blame the images
        log.warning("batched segmentation failed (%s); isolating images", exc)
    except Exception as exc:
        log.warning("batched segmentation failed (%s); isolating images", exc)
    out: dict[str, ImageResult | str] = {}
    for inp in inputs:
        try:
            out[inp.key] = process_images([inp], run.variants, segmenter, run.process)[0]
        except Exception as exc:
            out[inp.key] = f"{inp.key}: {type(exc).__name__}: {exc}"
    return out


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in timings.items()}
