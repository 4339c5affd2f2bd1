"""Create or resume a run and hand its unfinished images to workers, in batches.

Everything that can be wrong with a submission (unknown variant, bad annotations, unreadable checkpoint, a run
name reused with another configuration) fails here, before anything is enqueued.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pixelperfect import __version__
from pixelperfect.config import MODEL_NAMES, Settings
from pixelperfect.db import repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.session import session_scope
from pixelperfect.pipeline.models import RANDOM_CHECKPOINT, sha256_hex
from pixelperfect.pipeline.preprocess import Variant, parse_variant
from pixelperfect.pipeline.process import ProcessSettings
from pixelperfect.producer.annotations import match_masks, match_to_keys, parse_annotations
from pixelperfect.producer.sources import absolute_url, list_image_keys, open_source
from pixelperfect.storage import read_url

#: How many batch messages one pipelined round trip to the broker carries.
PUBLISH_CHUNK = 200


class SubmitError(ValueError):
    """A submission that cannot run; nothing was enqueued."""


@dataclass
class SubmitRequest:
    source: str
    run: str
    variants: Sequence[str] = ("raw", "clahe")
    model: str | None = None
    checkpoint: str | None = None
    annotations: str | None = None
    annotations_format: str = "rsna"
    gt_masks: str | None = None
    batch_size: int | None = None
    process: ProcessSettings = field(default_factory=ProcessSettings)


@dataclass
class SubmitResult:
    run_id: int
    run: str
    created: bool
    images: int
    new_images: int
    pending: int
    batches: int
    annotated: int


def parse_variants(texts: Sequence[str]) -> list[Variant]:
    variants, names = [], set()
    for text in texts or ("raw",):
        try:
            variant = parse_variant(text)
        except ValueError as exc:
            raise SubmitError(f"--variant {text!r}: {exc}") from None
        if variant.name in names:
            raise SubmitError(f"variant name {variant.name!r} given twice")
        names.add(variant.name)
        variants.append(variant)
    return variants


def _checkpoint(model: str, checkpoint: str | None, settings: Settings) -> tuple[str | None, str | None]:
    if model == "grabcut":
        return None, None
    if not checkpoint:
        if model == "sam_tiny":
            return RANDOM_CHECKPOINT, None
        raise SubmitError(
            f"model {model} needs a checkpoint: --checkpoint PATH|s3://… or PIXELPERFECT_CHECKPOINT "
            f"(use '{RANDOM_CHECKPOINT}' for random weights in speed tests)"
        )
    if checkpoint == RANDOM_CHECKPOINT:
        return checkpoint, None
    url = checkpoint if "://" in checkpoint else absolute_url(checkpoint)
    try:
        data = read_url(url, endpoint_url=settings.s3_endpoint_url)
    except Exception as exc:
        raise SubmitError(f"cannot read checkpoint {checkpoint}: {exc}") from None
    return url, sha256_hex(data)


def run_config(req: SubmitRequest, settings: Settings, variants: list[Variant]) -> dict[str, Any]:
    model = req.model or settings.model
    if model not in MODEL_NAMES:
        raise SubmitError(f"unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
    checkpoint, sha = _checkpoint(model, req.checkpoint or settings.checkpoint, settings)
    return {
        "source_url": absolute_url(req.source),
        "store_url": absolute_url(settings.store_url),
        "model": model,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sha,
        "variants": [{"name": v.name, "spec": v.spec, "hash": v.spec_hash} for v in variants],
        "prompt_mode": "boxes",
        "settings": {
            **req.process.as_dict(),
            "annotations": bool(req.annotations),
            "gt_masks": absolute_url(req.gt_masks) if req.gt_masks else None,
        },
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def submit(
    req: SubmitRequest,
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    execute: bool = True,
) -> SubmitResult:
    """Validate, register and enqueue (or, embedded, run) the run's unfinished images."""
    variants = parse_variants(req.variants)
    config = run_config(req, settings, variants)
    batch_size = req.batch_size or settings.batch_size
    source = open_source(req.source, settings.s3_endpoint_url)
    keys = list(list_image_keys(source))
    if not keys:
        raise SubmitError(f"no images under {req.source}")
    boxes: dict[str, list[list[float]]] = {}
    if req.annotations:
        try:
            text = read_url(
                req.annotations if "://" in req.annotations else absolute_url(req.annotations),
                endpoint_url=settings.s3_endpoint_url,
            ).decode("utf-8-sig")
        except Exception as exc:
            raise SubmitError(f"cannot read annotations {req.annotations}: {exc}") from None
        boxes = match_to_keys(parse_annotations(text, req.annotations_format, req.annotations), keys)
    gt: dict[str, str] = {}
    if req.gt_masks:
        mask_store = open_source(req.gt_masks, settings.s3_endpoint_url)
        gt = {k: mask_store.url_for(m) for k, m in match_masks(list_image_keys(mask_store), keys).items()}
        if not gt:
            raise SubmitError(f"no ground-truth mask under {req.gt_masks} matches an image stem")

    upgrade(settings.database_url)
    digest = config_hash(config)
    with session_scope(settings.database_url) as session:
        existing = repo.get_run(session, name=req.run)
        created = existing is None
        if existing is not None and existing.config_hash != digest:
            raise SubmitError(_config_diff(req.run, existing, config))
        run = existing or repo.create_run(
            session, name=req.run, fields={**config, "code_version": __version__, "config_hash": digest}
        )
        run_id = run.id
        new = repo.add_images(session, run_id=run_id, keys=keys, gt_masks=gt)
        repo.add_annotations(session, run_id=run_id, boxes=boxes)
        pending = repo.keys_with_status(session, run_id=run_id, statuses=["queued"])
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    if execute:
        dispatch(run_id, req.run, batches, settings, on_progress=on_progress)
    return SubmitResult(run_id, req.run, created, len(keys), new, len(pending), len(batches), len(boxes))


def dispatch(
    run_id: int,
    run_name: str,
    batches: list[list[str]],
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """Distributed: publish one ``segment_batch`` message per batch. Embedded: run them here, in order."""
    if settings.embedded:
        run_embedded(run_id, batches, settings, on_progress=on_progress)
        return
    from pixelperfect.worker.tasks import segment_batch

    with segment_batch.app.producer_or_acquire() as producer:
        for i, batch in enumerate(batches):
            segment_batch.apply_async(
                (run_id, batch),
                producer=producer,
                argsrepr=f"(run={run_name!r}, keys={len(batch)})",  # what Flower shows: short and meaningful
            )
            if on_progress and (i % PUBLISH_CHUNK == 0 or i == len(batches) - 1):
                on_progress(i + 1, len(batches))


def run_embedded(
    run_id: int,
    batches: list[list[str]],
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    """In-process execution with the worker's retry policy: retry a failing batch, then give up on it."""
    from pixelperfect.worker.batch import run_batch
    from pixelperfect.worker.tasks import give_up

    done = 0
    for batch in batches:
        for attempt in range(settings.task_max_retries + 1):
            try:
                run_batch(run_id, batch)
                break
            except Exception as exc:
                if attempt == settings.task_max_retries:
                    give_up(run_id, batch, exc)
                else:
                    time.sleep(min(30.0, settings.retry_backoff_s * 2**attempt))
        done += len(batch)
        if on_progress:
            on_progress(done, sum(len(b) for b in batches))


def _config_diff(name: str, existing: Any, config: dict[str, Any]) -> str:
    diffs = [f"{k}: {getattr(existing, k)!r} -> {v!r}" for k, v in config.items() if getattr(existing, k) != v]
    return (
        f"run {name!r} exists with a different configuration ({'; '.join(diffs) or 'settings'}); "
        "runs are immutable: choose a new --run name"
    )
