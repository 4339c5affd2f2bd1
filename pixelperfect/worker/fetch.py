"""The fetch and decode stages of one image: source object -> decoded pixels, ground-truth mask, image columns.

Per-image problems (a missing or invalid key, undecodable bytes, a bad ground-truth mask) end in a reason and an
error on the record, never in an exception: one image fails, the batch goes on. Store failures other than a
missing object raise (the caller retries the batch).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelperfect.pipeline.decode.limits import DecodeLimits
from pixelperfect.pipeline.decode.mask import decode_mask
from pixelperfect.pipeline.decode.reader import ImageDecodeError, decode_image
from pixelperfect.pipeline.decode.spacing import resolve_spacing
from pixelperfect.pipeline.model.protocol import model_input_side
from pixelperfect.pipeline.options import PromptMode
from pixelperfect.pipeline.records import ImageInput, PreparedImage
from pixelperfect.storage import (
    InvalidKeyError,
    ObjectNotFoundError,
    SourceUnavailableError,
    UnsupportedObjectError,
    read_url,
)
from pixelperfect.worker.runtime import RunSpec, Runtime


@dataclass(frozen=True)
class ImageTodo:
    """One image row of the batch still to process: its key, row id and ground-truth mask URL."""

    key: str
    image_id: int
    gt_url: str | None


@dataclass
class FetchedImage:
    """An image on its way through the batch. Written by the I/O thread that fetches and prepares it, then only
    by the thread driving the batch (never by post or upload threads).

    ``reason``/``error``: why it failed (``None`` while it has not); ``fields``: image columns learnt on the way
    (``content_sha256``, ``size_bytes``, ``width``, ``height``, ``meta``); ``timings``: seconds per stage.
    """

    todo: ImageTodo
    input: ImageInput | None = None
    prepared: PreparedImage | None = None
    reason: str | None = None
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # --output dicom-seg (worker/segout.py): the source file until its header is taken, the SEGs to build after
    # the model, and their outcomes
    source: bytes | None = None
    seg_jobs: list[Any] = field(default_factory=list)
    seg_outcomes: list[Any] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.todo.key

    def fail(self, reason: str, error: str) -> None:
        self.reason, self.error = reason, error
        self.input = self.prepared = None  # its pixels are of no more use


def decode_side(rt: Runtime, run: RunSpec, segmenter: Any) -> int | None:
    """The long side to decode images at (``model_side`` of :func:`decode_image`): the model's input size in box
    mode with a SAM-like segmenter, unless ``decode_full_resolution``; ``None`` (full resolution) otherwise."""
    if rt.settings.decode_full_resolution or run.process.prompt_mode != PromptMode.boxes:
        return None
    return model_input_side(segmenter)


def fetch_image(
    rt: Runtime,
    run: RunSpec,
    todo: ImageTodo,
    boxes: list[list[float]],
    points: list[list[float]],
    model_side: int | None = None,
) -> FetchedImage:
    """Download and decode ``todo``'s image and its ground-truth mask; ``boxes``/``points``: its prompts (or, in
    points and auto mode, the boxes are ground truth only); ``model_side``: see :func:`decode_side`."""
    out = FetchedImage(todo)
    key = todo.key
    t0 = time.perf_counter()
    try:
        data = rt.store(run.source_url).get(key)
    except (ObjectNotFoundError, SourceUnavailableError, UnsupportedObjectError) as exc:
        out.fail(exc.reason, str(exc))  # missing | not_found | source_unavailable | not_an_image | missing_codec
        return out
    except InvalidKeyError as exc:
        out.fail("invalid_key", str(exc))
        return out
    t1 = time.perf_counter()
    out.source = data if "dicom-seg" in run.outputs else None
    out.fields = {"content_sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    try:
        decoded = decode_image(data, key, max_pixels=rt.settings.max_pixels, model_side=model_side,
                               limits=decode_limits(rt.settings))  # fmt: skip
    except ImageDecodeError as exc:
        out.fail(exc.reason, str(exc))
        return out
    except Exception as exc:  # a decoder bug must not take the batch down with it
        out.fail("decode_error", f"{key}: {type(exc).__name__}: {exc}")
        return out
    height, width = decoded.full_shape  # the original's size, also after a reduced-resolution decode
    spacing, spacing_meta = resolve_spacing(decoded.meta, run.process.pixel_spacing)
    out.fields.update(width=width, height=height, meta={**decoded.meta, **spacing_meta})
    gt = None
    if todo.gt_url:
        try:
            gt = load_gt_mask(todo.gt_url, rt, (height, width))
        except ObjectNotFoundError as exc:
            out.fail("gt_mask_missing", str(exc))
            return out
        except ValueError as exc:
            out.fail("gt_mask_invalid", f"{todo.gt_url}: {exc}")
            return out
    out.timings = {"download": t1 - t0, "decode": time.perf_counter() - t1}
    out.input = ImageInput(key=key, pixels=decoded.pixels, boxes=boxes, gt_mask=gt, points=points, spacing=spacing)
    out.input.full_size = decoded.full_shape if decoded.reduced else None
    return out


def decode_limits(settings: Any) -> DecodeLimits:
    """The settings' limits on what a DICOM object may declare (``max_inflated_bytes``, ``max_sequence_depth``,
    ``max_dicom_elements``)."""
    return DecodeLimits(settings.max_inflated_bytes, settings.max_sequence_depth, settings.max_dicom_elements)


def check_budget(f: FetchedImage, budget_s: float) -> None:
    """Fail ``f`` with ``too_slow`` when its decode and preprocess took more than ``budget_s`` seconds (0: no
    budget): its result is dropped, the batch goes on. The stages are timed after they return; see
    ``Settings.decode_budget_s`` for why nothing is interrupted."""
    spent = f.timings.get("decode", 0.0) + f.timings.get("preprocess", 0.0)
    if budget_s > 0 and f.reason is None and spent > budget_s:
        f.fail("too_slow", f"{f.key}: decode + preprocess took {spent:.1f} s, over the {budget_s:g} s budget")


def load_gt_mask(url: str, rt: Runtime, shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask at ``url`` as ``(H, W)`` bool (any non-zero pixel is foreground); ``ValueError`` when
    it does not decode or its size is not ``shape`` ``(H, W)`` (checked from its header before it is decoded)."""
    if url.startswith("s3://"):  # the runtime's store per bucket: one S3 client per process, not one per mask
        bucket, _, key = url[len("s3://") :].partition("/")
        data = rt.store(f"s3://{bucket}").get(key)
    else:
        data = read_url(url)
    return decode_mask(data, shape)
