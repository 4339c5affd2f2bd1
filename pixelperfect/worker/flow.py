"""The overlapped stages of one batch: fetch -> decode -> preprocess (I/O threads) | encode -> prompt -> segment
(the calling thread: model work only) | score -> PNG -> store (post and upload threads).

Images are fetched, decoded and prepared one group of ``encoder_batch`` ahead of the model; finished images are
scored and PNG-encoded on post threads and uploaded on upload threads while the model works on the next group.
Every queue between the stages is bounded (:data:`PREFETCH_GROUPS`, :data:`POST_GROUPS`), so host memory stays
bounded whatever the batch size.

Ownership: a :class:`~pixelperfect.worker.fetch.FetchedImage` is written by the I/O thread that loads it, then
only by the calling thread. Post threads get the prepared image and its predictions and return a new
:class:`ImageResult` (or an error) with the upload futures of its masks; they write nothing they did not create.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from typing import Any

from pixelperfect.pipeline.decode import gpu as gpu_decode
from pixelperfect.pipeline.model.protocol import Prediction, Segmenter
from pixelperfect.pipeline.records import ImageResult, PreparedImage
from pixelperfect.pipeline.stages import finish_image, predict_images, prepare_image
from pixelperfect.storage import ObjectStore, join_key, validate_key
from pixelperfect.worker import pools, segout
from pixelperfect.worker.fetch import FetchedImage, ImageTodo, check_budget, decode_side, fetch_image
from pixelperfect.worker.pausing import StoreFailure
from pixelperfect.worker.runtime import RunSpec, Runtime

log = logging.getLogger(__name__)

#: Groups of ``encoder_batch`` images fetched ahead of the one the model works on (bounded prefetch).
PREFETCH_GROUPS = 1
#: Images the model may finish ahead of post-processing and upload, in groups of ``encoder_batch``; beyond this
#: the model waits, so finished masks cannot pile up in memory.
POST_GROUPS = 2

#: What a post thread returns: the image's result (or the error that failed it) and its masks' upload futures.
Posted = tuple[ImageResult | str, list[Future[None]]]


def mask_key(run: RunSpec, image_key: str, variant: str, prompt_index: int) -> str:
    """``<run>/masks/<image key>/<variant>/<prompt>.png`` under the run's store (deterministic)."""
    return validate_key(join_key(run.name, "masks", image_key, variant, f"{prompt_index}.png"))


class BatchFlow:
    """One batch through the overlapped stages (:meth:`run`); one instance per batch, driven by one thread."""

    def __init__(
        self,
        rt: Runtime,
        run: RunSpec,
        segmenter: Segmenter,
        store: ObjectStore,
        boxes: dict[str, list[list[float]]],
        points: dict[str, list[list[float]]],
        before_model: Callable[[list[int], list[int]], None] | None = None,
    ) -> None:
        self.rt, self.run_spec, self.segmenter, self.store = rt, run, segmenter, store
        self.boxes, self.points = boxes, points
        # (image ids about to enter the encoder, every image id of the batch): the durable model-work record and
        # the lease renewal (worker/leases.py), called before each encoder group
        self.before_model = before_model
        self.image_ids: list[int] = []
        self.pools = pools.worker_pools()
        self.group_size = rt.settings.encoder_batch
        self.slots = threading.BoundedSemaphore(POST_GROUPS * self.group_size)
        self.fetched: list[FetchedImage] = []
        self.ahead: deque[list[Future[FetchedImage]]] = deque()
        self.posts: list[tuple[FetchedImage, Future[Posted]]] = []
        self.decode_side = decode_side(rt, run, segmenter)  # reduced-resolution decode for the model's input
        gpu_decode.enable_for_device(rt.settings.device)  # JPEG / JPEG 2000 on the GPU where nvImageCodec is there

    def run(self, todo: Sequence[ImageTodo]) -> tuple[list[FetchedImage], dict[str, ImageResult]]:
        """Every image's record, in ``todo`` order (failed ones carry their reason), and the result of every image
        that finished, its masks stored. A failed upload or an out-of-memory error raises after every thread of
        this batch stopped."""
        groups = iter([todo[i : i + self.group_size] for i in range(0, len(todo), self.group_size)])
        self.image_ids = [item.image_id for item in todo]
        try:
            for _ in range(1 + PREFETCH_GROUPS):
                self._prefetch(groups)
            while self.ahead:
                ready = [fut.result() for fut in self.ahead.popleft()]
                self._prefetch(groups)
                self.fetched.extend(ready)
                self._segment(ready)
            return self.fetched, self._collect()
        except BaseException as exc:
            self._abort(exc)
            raise

    # --- fetch -> decode -> preprocess (I/O threads) ----------------------------------------------------------

    def _prefetch(self, groups: Iterator[Sequence[ImageTodo]]) -> None:
        group = next(groups, None)
        if group:
            self.ahead.append([self.pools.fetch.submit(self._load, item) for item in group])

    def _load(self, todo: ImageTodo) -> FetchedImage:
        prompts = self.boxes.get(todo.key, []), self.points.get(todo.key, [])
        try:
            f = fetch_image(self.rt, self.run_spec, todo, *prompts, model_side=self.decode_side)
        except MemoryError:
            raise
        except Exception as exc:  # the source does not answer (fetch fails an image only for its own faults)
            raise StoreFailure("source", self._address(self.run_spec.source_url), exc) from exc
        if f.input is not None:
            start = time.perf_counter()
            try:
                f.prepared = prepare_image(f.input, self.run_spec.variants, self.segmenter, self.run_spec.process)
            except MemoryError:
                raise
            except Exception as exc:  # a preprocessing step that fails on this image fails this image only
                f.fail("segmentation_error", f"{f.key}: {type(exc).__name__}: {exc}")
            f.timings["preprocess"] = time.perf_counter() - start
            check_budget(f, self.rt.settings.decode_budget_s)
        return f

    # --- encode -> prompt -> segment (this thread) ------------------------------------------------------------

    def _segment(self, ready: list[FetchedImage]) -> None:
        pairs = [(f, f.prepared) for f in ready if f.prepared is not None]
        if pairs and self.before_model is not None:  # images with prompts go through the encoder
            self.before_model([f.todo.image_id for f, prep in pairs if prep.inputs], self.image_ids)
        predictions = predict_group([prep for _, prep in pairs], self.run_spec, self.segmenter)
        for (f, prep), prediction in zip(pairs, predictions, strict=True):
            f.prepared = f.input = None  # the post thread owns the pixels now; freed when it is done
            if isinstance(prediction, str):
                f.fail("segmentation_error", prediction)
                continue
            self.slots.acquire()  # the model waits here while post-processing and uploads lag behind
            post = self.pools.post.submit(self._finish, f.key, prep, prediction)
            post.add_done_callback(lambda fut: pools.release_when_uploaded(fut, self.slots))
            self.posts.append((f, post))

    # --- score -> PNG -> store (post and upload threads) ------------------------------------------------------

    def _finish(self, key: str, prepared: PreparedImage, predictions: dict[str, Prediction]) -> Posted:
        try:
            result = finish_image(prepared, predictions, self.run_spec.process)
        except MemoryError:
            raise
        except Exception as exc:  # scoring failed on this image: it alone fails
            return f"{key}: {type(exc).__name__}: {exc}", []
        puts = []
        for seg in result.segments:
            where = mask_key(self.run_spec, key, seg.variant, seg.prompt_index)
            seg.mask_key = self.store.url_for(where)
            puts.append(self.pools.upload.submit(self.store.put, where, seg.mask_png, "image/png"))
        return result, puts

    def _collect(self) -> dict[str, ImageResult]:
        """Wait for every post thread and upload; a failed upload raises :class:`StoreFailure` (no row may name a
        missing object)."""
        results: dict[str, ImageResult] = {}
        uploads: list[Future[None]] = []
        for f, post in self.posts:
            result, puts = post.result()
            uploads.extend(puts)
            if isinstance(result, str):
                f.fail("segmentation_error", result)
            else:
                results[f.key] = result
                segout.submit_segs(self.run_spec, self.store, f, result)  # DICOM-SEG: queued, built after the model
        t0 = time.perf_counter()
        for put in uploads:
            try:
                put.result()
            except MemoryError:
                raise
            except Exception as exc:  # the store refuses: worker/pausing.py counts it against the run
                raise StoreFailure("store", self._address(self.store.url), exc) from exc
        waited = (time.perf_counter() - t0) / max(len(results), 1)
        for result in results.values():
            result.timings["upload"] = waited  # the upload time not hidden behind the model
            for seg in result.segments:
                seg.mask_png = b""  # stored; only the rows are still needed
        return results

    def _address(self, url: str) -> str:
        endpoint = self.rt.settings.s3_endpoint_url
        return f"{url} (S3 endpoint {endpoint})" if url.startswith("s3://") and endpoint else url

    def _abort(self, exc: BaseException) -> None:
        """Stop the batch's threads: cancel what has not started, wait for what has (unless the process itself is
        being cancelled), so no thread of this batch still writes once the caller retries it."""
        for futures in self.ahead:
            for fut in futures:
                fut.cancel()
        for _, post in self.posts:
            post.cancel()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return  # the pool process is being cancelled (soft shutdown over): its threads end with it, at once
        wait([post for _, post in self.posts])
        finished = [post.result()[1] for _, post in self.posts if not post.cancelled() and post.exception() is None]
        wait([put for puts in finished for put in puts])


def predict_group(preps: list[PreparedImage], run: RunSpec, segmenter: Any) -> list[dict[str, Prediction] | str]:
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
