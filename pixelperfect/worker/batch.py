"""``run_batch``: fetch -> decode -> pipeline -> store masks -> persist rows. Celery and embedded mode both call it.

The stages overlap: images are fetched, decoded and prepared (preprocessing variants, the model's input) on I/O
threads one group of ``encoder_batch`` ahead of the model; the model runs on the calling thread; finished images
are scored and PNG-encoded on post threads and uploaded on upload threads while the model works on the next group.
Every queue between the stages is bounded, so host memory stays bounded whatever the batch size. The rows of the
whole batch are written in one transaction at the end, after every mask object exists.

Per-image problems (undecodable bytes, a missing object, a bad ground-truth mask) end that image ``failed`` with a
reason and never stop the batch. Infrastructure problems (store, database, model) raise, so the caller retries
the whole batch; every write is an idempotent upsert, and a mask object is written before the row that names it.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pixelperfect.db import bulk, repo
from pixelperfect.db.models import ImageStatus
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.decode import ImageDecodeError, decode_image
from pixelperfect.pipeline.process import (
    ImageInput,
    ImageResult,
    Prediction,
    PreparedImage,
    finish_image,
    predict_images,
    prepare_image,
)
from pixelperfect.storage import InvalidKeyError, ObjectNotFoundError, join_key, read_url, validate_key
from pixelperfect.worker import pools
from pixelperfect.worker.metrics import observe_batch
from pixelperfect.worker.runtime import RunSpec, Runtime, get_runtime

log = logging.getLogger(__name__)

#: Groups of ``encoder_batch`` images fetched ahead of the one the model works on (bounded prefetch).
PREFETCH_GROUPS = 1
#: Images the model may finish ahead of post-processing and upload, in groups of ``encoder_batch``; beyond this
#: the model waits, so finished masks cannot pile up in memory.
POST_GROUPS = 2


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
    prepared: PreparedImage | None = None
    reason: str | None = None
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def mask_key(run: RunSpec, image_key: str, variant: str, prompt_index: int) -> str:
    """``<run>/masks/<image key>/<variant>/<prompt>.png`` under the run's store (deterministic)."""
    return validate_key(join_key(run.name, "masks", image_key, variant, f"{prompt_index}.png"))


def run_batch(
    run_id: int, keys: Sequence[str], runtime: Runtime | None = None, *, worker_host: str | None = None
) -> BatchSummary:
    """Process the images ``keys`` of run ``run_id`` (already registered as image rows).

    ``worker_host`` goes into ``Image.worker_host``: the Celery node name (``gpu0@host``) inside a worker, so two
    workers on one machine stay apart; the machine's hostname when not given (embedded runs).
    """
    rt = runtime or get_runtime()
    run = rt.run_spec(run_id)
    summary = BatchSummary(run_id)
    t_start = time.perf_counter()
    with session_scope(rt.settings.database_url) as session:
        rows = repo.images_by_key(session, run_id=run_id, keys=keys)
        boxes = repo.boxes_for(session, run_id=run_id, keys=keys)
        points = repo.points_for(session, run_id=run_id, keys=keys) if run.process.prompt_mode == "points" else {}
        todo = [
            (k, rows[k].id, rows[k].gt_mask_key) for k in keys if k in rows and rows[k].status != ImageStatus.done.value
        ]
    read_s = time.perf_counter() - t_start  # the batch's database reads, shared out in timings["db"]
    summary.skipped = len(keys) - len(todo)
    if not todo:
        return summary
    segmenter = rt.segmenter(run)  # loaded once per process; raises (-> batch retry) if the model cannot load
    store = rt.store(run.store_url)
    fetched, results = _pipeline(rt, run, segmenter, store, todo, boxes, points)

    t0 = time.perf_counter()
    host = worker_host or socket.gethostname()
    done_timings: dict[int, dict[str, float]] = {}
    done: list[tuple[int, list[dict[str, Any]], dict[str, Any]]] = []
    with session_scope(rt.settings.database_url) as session:  # the whole batch is one transaction
        for f in fetched:
            result = results.get(f.key)
            if f.reason is None and isinstance(result, ImageResult):
                segs = [
                    {
                        **s.row,
                        "run_id": run.id,
                        "image_id": f.image_id,
                        "mask_key": store.url_for(mask_key(run, f.key, s.row["variant"], s.row["prompt_index"])),
                    }
                    for s in result.segments
                ]
                done.append((f.image_id, segs, {**f.fields, "worker_host": host}))
                done_timings[f.image_id] = {**f.timings, **result.timings}  # fetch stages + model stages
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
        bulk.mark_done_many(session, images=done)  # all finished images in a few executemany statements
        # "db": this image's share of the batch's reads and writes (all but the commit), known only now, so the
        # timings go in with one more statement in the same transaction
        db_each = (read_s + time.perf_counter() - t0) / len(fetched)
        for timings in done_timings.values():
            timings["db"] = db_each
        repo.set_timings(session, timings={i: _rounded(t) for i, t in done_timings.items()})
    observe_batch(
        done=summary.done,
        failures=summary.failures,
        segments=summary.segments,
        timings=list(done_timings.values()),
        seconds=time.perf_counter() - t_start,
    )
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
    if url.startswith("s3://"):  # the runtime's store per bucket: one S3 client per process, not one per mask
        bucket, _, key = url[len("s3://") :].partition("/")
        data = rt.store(f"s3://{bucket}").get(key)
    else:
        data = read_url(url)
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("ground-truth mask does not decode as an image")
    if mask.shape != shape:
        raise ValueError(f"ground-truth mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return mask > 0


def _pipeline(
    rt: Runtime,
    run: RunSpec,
    segmenter: Any,
    store: Any,
    todo: list[tuple[str, int, str | None]],
    boxes: dict[str, list[list[float]]],
    points: dict[str, list[list[float]]],
) -> tuple[list[_Fetched], dict[str, ImageResult | str]]:
    """Fetch -> prepare (I/O threads) | model (this thread) | finish -> upload (post and upload threads).

    Returns every image's fetch record, in ``todo`` order, and per segmented image its result (masks uploaded) or
    the error that failed it. A failed upload or an out-of-memory error raises after the other threads stopped.
    """
    workers = pools.worker_pools()
    fetch_pool, post_pool, upload_pool = workers.fetch, workers.post, workers.upload
    size = rt.settings.encoder_batch
    groups = [todo[i : i + size] for i in range(0, len(todo), size)]
    slots = threading.BoundedSemaphore(POST_GROUPS * size)

    def fetch(item: tuple[str, int, str | None]) -> _Fetched:
        f = _fetch(rt, run, item[0], item[1], item[2], boxes.get(item[0], []))
        if f.input is not None:
            f.input.points = points.get(f.key, [])  # points mode: points are the prompts, boxes ground truth
            try:
                f.prepared = prepare_image(f.input, run.variants, segmenter, run.process)
            except MemoryError:
                raise
            except Exception as exc:  # a preprocessing step that fails on this image fails this image only
                f.reason, f.error = "segmentation_error", f"{f.key}: {type(exc).__name__}: {exc}"
        return f

    def finish(
        f: _Fetched, prepared: PreparedImage, predictions: dict[str, Prediction]
    ) -> tuple[ImageResult | str, list[Future[None]]]:
        try:
            result = finish_image(prepared, predictions, run.process)
        except MemoryError:
            raise
        except Exception as exc:
            return f"{f.key}: {type(exc).__name__}: {exc}", []
        f.prepared = f.input = None  # the pixels are no longer needed: free them before the batch ends
        puts = [
            upload_pool.submit(store.put, mask_key(run, f.key, seg.row["variant"], seg.row["prompt_index"]),
                               seg.mask_png, "image/png")
            for seg in result.segments
        ]  # fmt: skip
        return result, puts

    fetched: list[_Fetched] = []
    ahead: deque[list[Future[_Fetched]]] = deque()
    posts: list[tuple[_Fetched, Future[tuple[ImageResult | str, list[Future[None]]]]]] = []
    uploads: list[Future[None]] = []
    queue = iter(groups)
    for group in [next(queue, None) for _ in range(1 + PREFETCH_GROUPS)]:
        if group:
            ahead.append([fetch_pool.submit(fetch, item) for item in group])
    try:
        while ahead:
            ready = [fut.result() for fut in ahead.popleft()]
            group = next(queue, None)
            if group:
                ahead.append([fetch_pool.submit(fetch, item) for item in group])
            fetched.extend(ready)
            prepared = [(f, f.prepared) for f in ready if f.prepared is not None]
            predictions = _predict([prep for _, prep in prepared], run, segmenter)
            for (f, prep), prediction in zip(prepared, predictions, strict=True):
                if isinstance(prediction, str):
                    f.reason, f.error = "segmentation_error", prediction
                    continue
                slots.acquire()  # the model waits here while post-processing and uploads lag behind
                post = post_pool.submit(finish, f, prep, prediction)
                post.add_done_callback(lambda fut: pools.release_when_uploaded(fut, slots))
                posts.append((f, post))
        results: dict[str, ImageResult | str] = {}
        for f, post in posts:
            result, puts = post.result()
            uploads.extend(puts)
            results[f.key] = result
            if isinstance(result, str):  # scoring failed on this image: it alone fails
                f.reason, f.error = "segmentation_error", result
        t0 = time.perf_counter()
        for put in uploads:
            put.result()  # a failed upload raises: the batch is retried, no row points at a missing object
        waited = (time.perf_counter() - t0) / max(len(results), 1)
        for r in results.values():
            if isinstance(r, ImageResult):
                r.timings["upload"] = waited  # the upload time not hidden behind the model
                for seg in r.segments:
                    seg.mask_png = b""  # stored; only the rows are still needed
        return fetched, results
    except BaseException as exc:
        for futures in ahead:
            for fut in futures:
                fut.cancel()
        for _, post in posts:
            post.cancel()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise  # the pool process is being cancelled (soft shutdown over): its threads end with it, at once
        wait([post for _, post in posts])  # no thread of this batch may still write once the caller retries
        finished = [post.result()[1] for _, post in posts if not post.cancelled() and post.exception() is None]
        wait([put for puts in finished for put in puts])
        raise


def _predict(preps: list[PreparedImage], run: RunSpec, segmenter: Any) -> list[dict[str, Prediction] | str]:
    """The model on one group: all images in one batched call; if that raises, image by image so one bad input
    fails alone (an error string in its place). Out of memory is not the images' fault: it raises."""
    if not preps:
        return []
    try:
        return list(predict_images(preps, run.variants, segmenter, run.process))
    except (MemoryError, RuntimeError) as exc:
        if "CUDA" in str(exc) or isinstance(exc, MemoryError):
            raise  # out of device memory: retry the batch, do not blame the images
        log.warning("batched segmentation failed (%s); isolating images", exc)
    except Exception as exc:
        log.warning("batched segmentation failed (%s); isolating images", exc)
    out: list[dict[str, Prediction] | str] = []
    for prep in preps:
        try:
            out.append(predict_images([prep], run.variants, segmenter, run.process)[0])
        except Exception as exc:
            out.append(f"{prep.image.key}: {type(exc).__name__}: {exc}")
    return out


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in timings.items()}
