"""Create or resume a run and hand its unfinished images to workers, in batches.

Everything that can be wrong with a submission (unknown variant, bad annotations, unreadable checkpoint, a run
name reused with another configuration) fails here, before anything is enqueued. Then the listing streams through
in chunks (``producer/stream.py``): each chunk is registered in one transaction and its batches are published —
pipelined, pausing while the queue is full — before the next chunk is read, so workers start on the first images
while later ones are still being listed, and memory does not grow with the archive.

Without a broker (``settings.embedded``) the producer does not run batches itself: the caller passes a
:data:`BatchRunner` (``pixelperfect.embedded`` composes producer and worker, above both).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pixelperfect.broker.names import GPU_QUEUE
from pixelperfect.config import MODEL_NAMES, RANDOM_BY_DEFAULT, RANDOM_CHECKPOINT, SAM2_MODEL_NAMES, Settings
from pixelperfect.db import bulk, control, keyed, repo
from pixelperfect.db.migrate import upgrade
from pixelperfect.db.models import RunState, utcnow
from pixelperfect.db.session import session_scope
from pixelperfect.inputs.annotations import match_to_keys, stem
from pixelperfect.inputs.sources import absolute_url
from pixelperfect.pipeline.options import PROMPT_MODES, ConceptSettings, ProcessSettings, PromptMode
from pixelperfect.pipeline.preprocess.variants import Variant, parse_variant
from pixelperfect.producer import intake
from pixelperfect.producer.intake import SubmitError
from pixelperfect.producer.pacs import archive_settings
from pixelperfect.producer.stream import (
    PUBLISH_CHUNK,
    REGISTER_CHUNK,
    Backpressure,
    Batcher,
    KeyMatcher,
    Publisher,
    chunked,
    queue_length,
)
from pixelperfect.storage import is_archive_url, read_directory, read_url
from pixelperfect.version import ALLOW_VERSION_CHANGE, CODE_VERSION, VERSION_CHANGED

log = logging.getLogger(__name__)

__all__ = ["PUBLISH_CHUNK", "BatchRunner", "SubmitError", "SubmitRequest", "SubmitResult", "dispatch", "submit"]

#: Runs batches in this process (embedded mode): ``runner(run_id, batches, settings, on_progress=...)`` where
#: ``on_progress(images_done, images_total)`` is called after each batch.
BatchRunner = Callable[..., None]


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
    prompts: str | None = None  # boxes | points | auto; None: auto for a SAM run without annotations, else boxes
    points: str | None = None  # points mode: CSV key,x,y[,label] (path or URL)
    exemplars: str | None = None  # concept mode: exemplar boxes, key,x1,y1,x2,y2[,label] (or RSNA), path or URL
    exemplars_format: str = "csv"
    manifest: str | None = None  # keys to process, one per line relative to source (path or URL), instead of listing
    batch_size: int | None = None
    outputs: Sequence[str] = ("png",)  # png | png,dicom-seg | png,dicom-seg,dicom-sr
    stow_to: str | None = None  # dicomweb+http://… (STOW-RS) or dimse://… (C-STORE): target of the DICOM-SEG objects
    filters: Sequence[str] = ()  # DICOM archive sources: attribute filters, e.g. Modality=CR,DX
    process: ProcessSettings = field(default_factory=ProcessSettings)
    # publish every queued image again, even those a message was published for (after a broker lost its data)
    republish: bool = False
    # accept workers running other code than the run was created with (kept in runs.settings)
    allow_version_change: bool = False


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
    resumed: int = 0  # cancelled images, and with --allow-version-change images refused by version, queued again
    stopped: bool = False  # the run was cancelled while this submission was publishing: it stopped


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
        if model in RANDOM_BY_DEFAULT:
            return RANDOM_CHECKPOINT, None
        raise SubmitError(
            f"model {model} needs a checkpoint: --checkpoint PATH|s3://… or PIXELPERFECT_CHECKPOINT "
            f"(use '{RANDOM_CHECKPOINT}' for random weights in speed tests)"
        )
    if checkpoint == RANDOM_CHECKPOINT:
        return checkpoint, None
    url = checkpoint if "://" in checkpoint else absolute_url(checkpoint)
    if model in SAM2_MODEL_NAMES:
        return url, _sam2_checkpoint(model, checkpoint, url, settings)
    try:
        data = read_url(url, endpoint_url=settings.s3_endpoint_url)
    except Exception as exc:
        raise SubmitError(f"cannot read checkpoint {checkpoint}: {exc}") from None
    return url, hashlib.sha256(data).hexdigest()  # as the worker's check (pipeline.models.sha256_hex)


def _sam2_checkpoint(model: str, checkpoint: str, url: str, settings: Settings) -> str:
    """Check a SAM 2 Hugging Face directory (``config.json`` and the safetensors headers: no torch here) against
    ``model`` and return the sha256 over its weight files, as every worker checks it."""
    from pixelperfect.pipeline.model.hf_checkpoint import check_sam2_checkpoint, read_hf_checkpoint
    from pixelperfect.pipeline.model.protocol import CheckpointError

    def read(name: str) -> bytes:
        try:
            return read_url(f"{url.rstrip('/')}/{name}", endpoint_url=settings.s3_endpoint_url)
        except (NotADirectoryError, IsADirectoryError) as exc:  # a single file where a directory belongs
            raise FileNotFoundError(str(exc)) from None

    try:
        found = read_hf_checkpoint(read, checkpoint)
        check_sam2_checkpoint(model, found, checkpoint)
    except CheckpointError as exc:
        raise SubmitError(str(exc)) from None
    except Exception as exc:
        raise SubmitError(f"cannot read checkpoint {checkpoint}: {exc}") from None
    return found.sha256


#: Key suffixes of DICOM files in a directory or bucket (an archive's keys have none).
DICOM_SUFFIXES = (".dcm", ".dicom")


def _check_dicom_outputs(source: str, outputs: Any, first: list[str]) -> None:
    """``dicom-seg`` / ``dicom-sr`` reference their source instance: refused for a source whose first chunk of
    keys holds no DICOM file (an archive is DICOM by its URL)."""
    wanted = [o for o in outputs if o.startswith("dicom-")]
    if not wanted or is_archive_url(source):
        return
    if not any(k.lower().endswith(DICOM_SUFFIXES) for k in first):
        raise SubmitError(
            f"--output {','.join(wanted)} needs DICOM sources (a DICOM archive, or .dcm files): {source} lists "
            f"none among its first {len(first)} keys"
        )


def run_config(req: SubmitRequest, settings: Settings, variants: list[Variant]) -> dict[str, Any]:
    model = req.model or settings.model
    if model not in MODEL_NAMES:
        raise SubmitError(f"unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
    mode = prompt_mode(req, model)
    checkpoint: str | None
    sha: str | None
    process = replace(req.process, prompt_mode=mode)
    if model == "sam3":  # a Hugging Face directory; the phrases are checked with its tokenizer
        checkpoint, sha, concept = sam3_checkpoint(req.checkpoint or settings.checkpoint, req.process, settings)
        process = replace(process, concept=concept)
    else:
        checkpoint, sha = _checkpoint(model, req.checkpoint or settings.checkpoint, settings)
    try:
        archive = archive_settings(req.source, req.outputs, req.stow_to, req.filters, settings.research_use)
    except ValueError as exc:
        raise SubmitError(str(exc)) from None
    return {
        "source_url": absolute_url(req.source),
        "store_url": absolute_url(settings.store_url),
        "model": model,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sha,
        "variants": [{"name": v.name, "spec": v.spec, "hash": v.spec_hash} for v in variants],
        "prompt_mode": process.prompt_mode.value,
        "settings": {
            **process.as_dict(),
            "annotations": bool(req.annotations),
            "points": bool(req.points),
            **({"exemplars": bool(req.exemplars)} if req.exemplars else {}),
            "gt_masks": absolute_url(req.gt_masks) if req.gt_masks else None,
            **archive,
        },
    }


def prompt_mode(req: SubmitRequest, model: str) -> PromptMode:
    """The run's prompts: as asked, or by default ``auto`` for a SAM run without annotations (GrabCut has no
    confidence to filter automatic masks by, so it keeps ``boxes``), ``points`` when a points file is given."""
    asked = req.prompts
    if asked is None:
        asked = "points" if req.points else ("boxes" if req.annotations or model == "grabcut" else "auto")
    if asked not in PROMPT_MODES:
        raise SubmitError(f"--prompts must be one of {', '.join(PROMPT_MODES)}, not {asked!r}")
    mode = PromptMode(asked)
    if mode == PromptMode.points and not req.points:
        raise SubmitError("--prompts points needs --points CSV (key,x,y[,label])")
    if req.points and mode != PromptMode.points:
        raise SubmitError(f"--points is only used with --prompts points, not {mode}")
    if mode == PromptMode.auto and model == "grabcut":
        raise SubmitError("--prompts auto needs a SAM model: GrabCut has no confidence to filter masks by")
    if (mode == PromptMode.concept) != (model == "sam3"):
        raise SubmitError(
            "--prompts concept needs --model sam3, and sam3 takes only concept prompts "
            f"(--prompts concept --concept PHRASE); got model {model} with --prompts {mode}"
        )
    if mode == PromptMode.concept and not req.process.concept.concepts:
        raise SubmitError("--prompts concept needs at least one --concept PHRASE (e.g. --concept 'lung opacity')")
    if req.exemplars and mode != PromptMode.concept:
        raise SubmitError(f"--exemplars is only used with --prompts concept, not {mode}")
    return mode


def sam3_checkpoint(
    checkpoint: str | None, process: ProcessSettings, settings: Settings
) -> tuple[str, str, ConceptSettings]:
    """A ``sam3`` run's checkpoint directory URL, the sha256 of its weight files, and its concept settings with
    every phrase checked by the directory's tokenizer (empty, or over the text encoder's tokens: refused)."""
    from pixelperfect.pipeline.model.sam3_files import (
        ConceptError,
        Sam3FilesError,
        build_tokenizer,
        check_names,
        check_phrase,
        detector_config,
        wanted,
        weights_sha256,
    )

    if not checkpoint or checkpoint == RANDOM_CHECKPOINT:
        raise SubmitError(
            "model sam3 needs its Hugging Face directory: --checkpoint DIR|s3://…/DIR holding config.json, "
            "*.safetensors, vocab.json and merges.txt (huggingface-cli download facebook/sam3)"
        )
    url = checkpoint if "://" in checkpoint else absolute_url(checkpoint)
    try:
        files = read_directory(url, wanted, endpoint_url=settings.s3_endpoint_url)
    except Exception as exc:
        raise SubmitError(f"cannot read the sam3 checkpoint directory {checkpoint}: {exc}") from None
    concept = process.concept
    try:
        check_names(files)
        detector_config(files["config.json"])
        tokenizer = build_tokenizer(files)
        concepts = tuple(check_phrase(tokenizer, c) for c in concept.concepts)
        synonyms = tuple(tuple(check_phrase(tokenizer, s) for s in group) for group in concept.synonyms)
        concept = replace(concept, concepts=concepts, synonyms=synonyms)
    except (Sam3FilesError, ConceptError, ValueError) as exc:
        raise SubmitError(str(exc)) from None
    return url, weights_sha256(files), concept


def unmatched_idents(idents: Iterable[str], keys: Iterable[str]) -> list[str]:
    """The identifiers (image keys or stems, as in an annotation file) that name none of ``keys``."""
    key_set = set(keys)
    stems = {stem(k) for k in key_set}
    return sorted(i for i in idents if i not in key_set and i not in stems and stem(i) not in stems)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def submit(
    req: SubmitRequest,
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    execute: bool = True,
    run_batches: BatchRunner | None = None,
) -> SubmitResult:
    """Validate, register and enqueue (or, embedded, run with ``run_batches``) the run's unfinished images, chunk
    by chunk; ``execute=False`` only registers them.

    ``on_progress(done, known)``: batches published (distributed) or images processed (embedded) so far, out of
    those known so far (the total grows while the listing streams).
    """
    if execute:
        _check_runner(settings, run_batches)
    variants = parse_variants(req.variants)
    config = run_config(req, settings, variants)
    batch_size = req.batch_size or settings.batch_size
    rsna = bool(req.annotations) and req.annotations_format == "rsna"
    filters = config["settings"].get("filters")
    listing = intake.source_listing(req.source, req.manifest, settings, filters, track_patients=rsna)
    chunks = chunked(intake.list_keys(req.source, req.manifest, settings, listing), REGISTER_CHUNK)
    first = next(chunks, [])
    if not first:
        raise SubmitError(f"no images under {req.source}")
    second = next(chunks, [])
    whole = not second  # the listing fits one chunk: matches can be checked against all of it before registering
    chunks = itertools.chain([first], [second] if second else [], chunks)
    boxes = intake.box_matcher(req.annotations, req.annotations_format, settings, listing) if req.annotations else None
    points = KeyMatcher(intake.read_points(req.points, settings)) if req.points else None
    masks = intake.mask_index(req.gt_masks, settings) if req.gt_masks else None
    exemplars = None
    if req.exemplars:
        exemplars = KeyMatcher(intake.read_exemplars(req.exemplars, req.exemplars_format, settings))
        every = first if whole else list(intake.list_keys(req.source, req.manifest, settings, listing))
        unmatched = unmatched_idents(exemplars.values, every)
        if unmatched:
            shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
            raise SubmitError(f"exemplars in {req.exemplars} name images that are not in the run: {shown}")
    if whole and points is not None and not match_to_keys(points.values, first):
        raise SubmitError(f"no point in {req.points} matches an image key or stem")
    if whole and masks is not None and not any(stem(k) in masks for k in first):
        raise SubmitError(f"no ground-truth mask under {req.gt_masks} matches an image stem")
    _check_dicom_outputs(req.source, config["settings"].get("outputs") or (), first)

    upgrade(settings.database_url)
    digest = config_hash(config)
    with session_scope(settings.database_url) as session:
        existing = repo.get_run(session, name=req.run)
        created = existing is None
        if existing is not None and existing.config_hash != digest:
            raise SubmitError(_config_diff(req.run, existing, config))
        run = existing or repo.create_run(
            session, name=req.run, fields={**config, "code_version": CODE_VERSION, "config_hash": digest}
        )
        run_id = run.id
        resumed = _resume(session, run) + _version_change(session, run, req.allow_version_change)

    sink = _Sink(run_id, req.run, settings, on_progress, run_batches, stamp=False) if execute else None
    publishing = sink is not None and sink.publisher is not None
    checkpoint = _Checkpoint(settings, run_id) if publishing else None
    batcher = Batcher(batch_size)
    images = new = pending = batches = annotated = analyzed = 0
    stopped = False
    try:
        for chunk in chunks:
            gt = {k: masks[stem(k)] for k in chunk if stem(k) in masks} if masks else {}
            stamp = utcnow() if checkpoint is not None else None
            with session_scope(settings.database_url) as session:  # one transaction per chunk
                if control.run_state(session, run_id=run_id) != RunState.active.value:
                    stopped = True  # `pixelperfect cancel` (or delete) while we were publishing: stop here
                    break
                inserted, queued = bulk.register_images(
                    session, run_id=run_id, keys=chunk, gt_masks=gt, unpublished_only=not req.republish,
                    published_at=stamp, unpublished_since=checkpoint.left if checkpoint is not None else None,
                )  # fmt: skip
                if boxes is not None:
                    matched = boxes.match(chunk)
                    repo.add_annotations(session, run_id=run_id, boxes=matched)
                    repo.mark_labelled(session, run_id=run_id, keys=list(matched))  # negatives: no boxes, labelled
                    annotated += len(matched)
                if points is not None:
                    repo.add_points(session, run_id=run_id, points=points.match(chunk))
                if exemplars is not None:
                    repo.add_exemplars(session, run_id=run_id, exemplars=exemplars.match(chunk))
            images, new, pending = images + len(chunk), new + inserted, pending + len(queued)
            if (inserted and analyzed == 0) or new >= 4 * analyzed > 0:
                _analyze(settings)  # the run's rows in the statistics: see _analyze
                analyzed = new
            ready = batcher.add(queued)
            batches += len(ready)
            if sink is not None:
                sink.send(ready, known_images=pending, known_batches=batches)
            if checkpoint is not None and stamp is not None:
                checkpoint.sent(stamp, queued=len(queued), held=batcher.held)
        rest = [] if stopped else batcher.flush()
        batches += len(rest)
        if sink is not None:
            sink.send(rest, known_images=pending, known_batches=batches)
        if checkpoint is not None and not stopped:
            checkpoint.done()
    finally:
        if sink is not None:
            sink.close()
    if new > analyzed:
        _analyze(settings)
    if points is not None and not points.matched:
        log.warning("no point in %s matches an image key or stem", req.points)
    if stopped:
        log.warning("run %s was cancelled or paused while it was being submitted: publishing stopped", req.run)
    return SubmitResult(run_id, req.run, created, images, new, pending, batches, annotated, resumed, stopped)


class _Checkpoint:
    """The run's publish checkpoint while this producer publishes (issue 24). The producer stamps ``published_at``
    when it registers a chunk, in the insert itself (one write per image; stamping after each publish was a second
    UPDATE of every row, a third of P5's time), so a stamp may precede its message by the time the chunk takes to
    publish, or longer while backpressure holds it. ``Run.publish_checkpoint`` says which stamps are backed: those
    before it. After each chunk is sent it moves up to the stamp of the oldest chunk whose keys the batcher still
    holds (a short last batch waits for the next chunk), or to now when it holds none; at the end it is cleared.
    The orphan sweep looks only below it; a producer that dies leaves it where it was, and the next ``submit``
    publishes again the queued images stamped from it on (a message at most sent twice: the fence and the lease
    let one execution write an image)."""

    def __init__(self, settings: Settings, run_id: int) -> None:
        self.settings, self.run_id = settings, run_id
        with session_scope(settings.database_url) as session:
            #: the checkpoint a producer that did not finish left: stamps from it on may lack their message
            self.left = control.open_publishing(session, run_id=run_id, at=utcnow())
        self.held_since: datetime | None = None

    def sent(self, stamp: datetime, *, queued: int, held: int) -> None:
        """A chunk stamped ``stamp`` with ``queued`` keys to publish was sent; the batcher holds ``held`` keys."""
        if held == 0:
            self.held_since = None
        elif held <= queued:
            self.held_since = stamp  # the held keys are this chunk's: every earlier chunk is out
        at = self.held_since or utcnow()
        self._set(at if self.left is None else min(at, self.left))

    def done(self) -> None:
        """Everything registered is published: every stamp of the run is backed."""
        self._set(None)

    def _set(self, at: datetime | None) -> None:
        with session_scope(self.settings.database_url) as session:
            control.set_publish_checkpoint(session, run_id=self.run_id, at=at)


def _analyze(settings: Settings) -> None:
    """``ANALYZE images`` (issue 24) after the first chunk of new rows, whenever the rows registered since grew
    fourfold, and after the registration: statements that name a run's images by key or id are written so that
    stale statistics cannot mislead them (``db/keyed.py``), except where the statistics have never seen the run,
    and every other statement on the run (status, report, the sweep) plans on its real size. About 0.3 s at a
    million rows (a 30,000-row sample); log4(run size / chunk) + 2 times a run."""
    with session_scope(settings.database_url) as session:
        keyed.analyze_images(session)


def _resume(session: Any, run: Any) -> int:
    """A cancelled run becomes active again, its cancelled images queued; a paused one active again, its queued
    images published again; a run being deleted is refused."""
    if run.state == RunState.deleting.value:
        raise SubmitError(f"run {run.name!r} is being deleted: finish with `pixelperfect delete {run.name} --yes`")
    if run.state == RunState.cancelled.value:
        n = control.resume_run(session, run_id=run.id)
        log.info("run %s was cancelled: resumed, %d cancelled images queued again", run.name, n)
        return n
    if run.state == RunState.paused.value:
        why = run.state_reason
        n = control.resume_paused(session, run_id=run.id)
        log.warning("run %s had paused itself (%s): resumed, its %d queued images published again", run.name, why, n)
        return 0
    return 0


def _version_change(session: Any, run: Any, allow: bool) -> int:
    """``--allow-version-change``: the run accepts workers of other code than its own (``runs.settings``), and its
    images they refused are queued again. Without it, a run of other code than this process's is named in a
    warning (workers of this code refuse its images)."""
    if not allow:
        if run.code_version != CODE_VERSION and not (run.settings or {}).get(ALLOW_VERSION_CHANGE):
            log.warning(
                "run %s was created with code %s, this is %s: workers running other code than the run's refuse its "
                "images (submit --allow-version-change accepts them)", run.name, run.code_version, CODE_VERSION
            )  # fmt: skip
        return 0
    run.settings = {**(run.settings or {}), ALLOW_VERSION_CHANGE: True}
    n = control.requeue_failed(session, run_id=run.id, reason=VERSION_CHANGED)
    if n:
        log.info("run %s: %d image(s) refused by version queued again", run.name, n)
    return n


def _check_runner(settings: Settings, run_batches: BatchRunner | None) -> None:
    if settings.embedded and run_batches is None:
        raise SubmitError(
            "PIXELPERFECT_BROKER_URL is unset and no batch runner was given: embedded runs go through "
            "pixelperfect.embedded (the command line does this)"
        )


class _Sink:
    """Where a chunk's batches go: published with backpressure (distributed) or run here, in order (embedded)."""

    def __init__(
        self,
        run_id: int,
        run_name: str,
        settings: Settings,
        on_progress: Callable[[int, int], None] | None,
        run_batches: BatchRunner | None = None,
        *,
        stamp: bool = True,
    ) -> None:
        self.run_id, self.settings, self.on_progress = run_id, settings, on_progress
        self.stamp = stamp  # False: the caller stamped at registration (submit; see _Checkpoint)
        self.run_batches = run_batches
        self.done = 0
        self.publisher: Publisher | None = None
        self._length: Any = None
        self._stamper: ThreadPoolExecutor | None = None
        self._stamping: Future[None] | None = None
        if not settings.embedded:
            from pixelperfect.broker.celery_app import app

            broker = settings.broker_url or ""
            self._length = queue_length(app, broker, GPU_QUEUE)
            pressure = Backpressure(self._length, settings.max_queued_batches)
            self.publisher = Publisher(app, broker, run_id, run_name, pressure)

    def send(self, batches: list[list[str]], *, known_images: int, known_batches: int) -> None:
        """Publish or run ``batches``; progress counts batches published (distributed) or images run (embedded)."""
        report = self.on_progress
        if self.publisher is not None:
            for start in range(0, len(batches), PUBLISH_CHUNK):  # each group noted in SQL once it is in the broker
                group = batches[start : start + PUBLISH_CHUNK]
                self.publisher.publish(group)
                if self.stamp:
                    self._stamp([k for b in group for k in b])
            self.done = self.publisher.published
            if report and batches:
                report(self.done, known_batches)
            return
        offset = self.done

        def progress(done: int, _total: int) -> None:
            if report:
                report(offset + done, known_images)

        assert self.run_batches is not None  # checked by _check_runner before anything was registered
        self.run_batches(self.run_id, batches, self.settings, on_progress=progress)
        self.done += sum(len(b) for b in batches)

    def _stamp(self, keys: list[str]) -> None:
        """``published_at`` on ``keys``, whose messages are in the broker now, in a thread of its own (issue 24): the
        UPDATE runs in PostgreSQL while this thread publishes the next group, instead of after it (at a million keys
        the stamps are about a fifth of the work). One stamp in flight at a time: the next waits for it, so an error
        surfaces here, a group later, and the keys held wait for one group at most. Stamps only ever follow their
        publish; a crash loses at most the group in flight, re-published on resume like any unstamped image."""
        if self._stamper is None:
            self._stamper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pp-stamp")
        self._wait_stamp()
        self._stamping = self._stamper.submit(self._mark, keys)

    def _mark(self, keys: list[str]) -> None:
        with session_scope(self.settings.database_url) as session:
            control.limit_idle(session, ttl_s=self.settings.visibility_timeout)
            control.mark_published(session, run_id=self.run_id, keys=keys)

    def _wait_stamp(self) -> None:
        if self._stamping is not None:
            stamping, self._stamping = self._stamping, None
            stamping.result()

    def close(self) -> None:
        try:
            self._wait_stamp()
        finally:
            if self._stamper is not None:
                self._stamper.shutdown(wait=True)
            if self.publisher is not None:
                self.publisher.close()
            if self._length is not None:
                self._length.close()


def dispatch(
    run_id: int,
    run_name: str,
    batches: list[list[str]],
    settings: Settings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    run_batches: BatchRunner | None = None,
) -> None:
    """Distributed: publish one ``segment_batch`` message per batch (pipelined, with backpressure). Embedded: run
    them here, in order, with ``run_batches``."""
    _check_runner(settings, run_batches)
    sink = _Sink(run_id, run_name, settings, on_progress, run_batches)
    try:
        images = sum(len(b) for b in batches)
        for start in range(0, len(batches), PUBLISH_CHUNK):
            sink.send(batches[start : start + PUBLISH_CHUNK], known_images=images, known_batches=len(batches))
    finally:
        sink.close()


def _config_diff(name: str, existing: Any, config: dict[str, Any]) -> str:
    diffs = [f"{k}: {getattr(existing, k)!r} -> {v!r}" for k, v in config.items() if getattr(existing, k) != v]
    return (
        f"run {name!r} exists with a different configuration ({'; '.join(diffs) or 'settings'}); "
        "runs are immutable: choose a new --run name"
    )
