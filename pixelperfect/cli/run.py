"""Run commands: ``submit`` (create or resume a run), ``worker``, ``status`` and ``retry``.

Images fail for reasons stored on their rows (``pixelperfect status RUN`` lists them): bad input files
(``truncated``, ``colour``, ...) fail again on retry, infrastructure that was fixed since (``batch_error`` after a
checkpoint was restored, ``missing`` after an object was uploaded) does not; ``retry --reason`` picks one kind.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import typer
from rich.table import Table

from pixelperfect import preflight
from pixelperfect.cli.common import command_settings, console, err, fail
from pixelperfect.config import Settings

#: ``submit --wait`` / ``retry --wait``: the run ended with failed images.
EXIT_FAILED_IMAGES = 1
#: The run paused itself (its store or database refused writes): ``submit`` resumes it.
EXIT_PAUSED = 3


def register(app: typer.Typer) -> None:
    """Add ``submit``, ``worker``, ``status`` and ``retry`` to the ``pixelperfect`` command."""
    app.command("submit")(submit)
    app.command("worker")(worker)
    app.command("status")(status)
    app.command("retry")(retry)


def submit(
    source: str = typer.Argument(
        ..., help="images: s3://bucket/prefix, file://dir, dicomweb+http://host/path or dimse://AE@host:port"
    ),
    run: str = typer.Option(..., "--run", help="run name (re-submitting a run resumes it)"),
    annotations: str | None = typer.Option(None, help="box annotations file (path or URL)"),
    annotations_format: str = typer.Option("rsna", help="rsna (patientId,x,y,width,height,Target) or csv"),
    gt_masks: str | None = typer.Option(None, help="ground-truth masks named by image stem (URL or dir)"),
    variant: list[str] = typer.Option(
        ["raw"], "--variant", help="preprocessing variant: built-in or saved name, or spec; repeat"
    ),
    variants_file: str = typer.Option("pixelperfect-variants.toml", help="saved variants (pixelperfect tune --save)"),
    model: str | None = typer.Option(
        None,
        help="sam_vit_b, sam_vit_l, sam_vit_h, medsam, sam_tiny, grabcut; SAM 2: sam2.1_hiera_tiny|small|base_plus|"
        "large, sam2_hiera_*, medsam2, sam2_tiny; SAM 3 (concept prompts): sam3",
    ),
    checkpoint: str | None = typer.Option(
        None, help="model weights: path or s3:// URL (SAM 2, SAM 3: a Hugging Face model directory or s3:// prefix)"
    ),
    batch_size: int | None = typer.Option(None, min=1, help="images per task"),
    consistency_k: int = typer.Option(4, min=0, help="perturbed boxes per prompt for consistency"),
    seed: int = typer.Option(0, help="seed of the box perturbations"),
    prompts: str | None = typer.Option(
        None, help="boxes | points | auto | concept (default: auto for a SAM run without annotations, else boxes)"
    ),
    concept: list[str] = typer.Option([], "--concept", help="--prompts concept: a noun phrase; repeat"),
    concept_variants: list[str] = typer.Option(
        [], "--concept-variants", help="PHRASE=SYNONYM|SYNONYM: rewordings of a --concept, each one perturbation"
    ),
    concept_threshold: float = typer.Option(0.3, min=0.0, max=0.99, help="--prompts concept: keep instances above"),
    exemplars: str | None = typer.Option(
        None, help="--prompts concept: exemplar boxes key,x1,y1,x2,y2[,label positive|negative] (path or URL)"
    ),
    exemplars_format: str = typer.Option("csv", help="csv (key,x1,y1,x2,y2[,label]) or rsna (+ optional label)"),
    points: str | None = typer.Option(None, help="--prompts points: CSV key,x,y[,label] (path or URL)"),
    manifest: str | None = typer.Option(None, help="keys to process, one per line (path or URL), instead of listing"),
    nsd_tolerance: float = typer.Option(2.0, min=0, help="NSD tolerance in px, where an image's spacing is unknown"),
    nsd_tolerance_mm: float = typer.Option(2.0, min=0, help="NSD tolerance in mm, where the pixel spacing is known"),
    pixel_spacing: str | None = typer.Option(
        None, help="ROW,COL (or one value) mm for images without their own spacing (PNG; DICOM's own wins)"
    ),
    points_per_side: int = typer.Option(16, min=1, max=128, help="--prompts auto: grid points per side"),
    lung_only: bool = typer.Option(True, help="--prompts auto: keep only masks inside the lung field"),
    auto_min_score: float = typer.Option(0.88, min=0, max=1, help="--prompts auto: keep masks with this predicted IoU"),
    auto_min_stability: float = typer.Option(0.95, min=0, max=1, help="--prompts auto: and this stability score"),
    wait: bool = typer.Option(False, help="distributed: wait until every image is done or failed"),
    republish: bool = typer.Option(
        False, help="publish every queued image again, also those with a message (after a broker lost its data)"
    ),
    output: str = typer.Option(
        "png",
        "--output",
        help="png, png,dicom-seg or png,dicom-seg,dicom-sr (DICOM sources: a SEG, a TID 1500 SR per image)",
    ),
    stow_to: str | None = typer.Option(
        None, help="send the SEGs to dicomweb+http://HOST:PORT/PATH (STOW-RS) or dimse://AE@HOST:PORT (C-STORE)"
    ),
    filter_: list[str] = typer.Option(
        [], "--filter", help="DICOM archive source: attribute filter, e.g. Modality=CR,DX"
    ),
    allow_version_change: bool = typer.Option(
        False,
        help="accept workers running other code than the run was created with (their refused images are queued again)",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="list and count the images and matched annotations, estimate the time; change nothing"
    ),
) -> None:
    """Create or resume a run and enqueue its images (embedded when PIXELPERFECT_BROKER_URL is unset).

    Re-submitting a run resumes it: finished images are skipped, and images whose message is still in the broker
    are not published twice. Submitting a cancelled run (`pixelperfect cancel`) resumes it: its cancelled images
    are queued again. A worker running other code than the run was created with (the version recorded per run)
    refuses its images (`version_changed`) until the run is re-submitted with --allow-version-change."""
    from pixelperfect.embedded import SubmitError
    from pixelperfect.embedded import submit as do_submit
    from pixelperfect.inputs.annotations import AnnotationError
    from pixelperfect.pipeline.options import ConceptSettings
    from pixelperfect.producer.request import submit_request

    settings = command_settings()
    try:
        concepts = ConceptSettings(
            concepts=tuple(concept),
            synonyms=parse_concept_variants(concept, concept_variants),
            threshold=concept_threshold,
        )
        req = submit_request(
            source,
            run,
            settings,
            variants=variant,
            variants_file=variants_file,
            model=model,
            checkpoint=checkpoint,
            annotations=annotations,
            annotations_format=annotations_format,
            gt_masks=gt_masks,
            batch_size=batch_size,
            consistency_k=consistency_k,
            seed=seed,
            prompts=prompts,
            points=points,
            manifest=manifest,
            nsd_tolerance=nsd_tolerance,
            nsd_tolerance_mm=nsd_tolerance_mm,
            pixel_spacing=pixel_spacing,
            points_per_side=points_per_side,
            lung_only=lung_only,
            auto_min_score=auto_min_score,
            auto_min_stability=auto_min_stability,
            republish=republish,
            output=output,
            stow_to=stow_to,
            filters=filter_,
            allow_version_change=allow_version_change,
            exemplars=exemplars,
            exemplars_format=exemplars_format,
            concept=concepts,
        )
    except ValueError as exc:
        fail(str(exc))
        return
    if dry_run:
        _print_plan(req, settings)
        return
    preflight.before_submit(settings, run=run, source=source, manifest=manifest)  # nothing registered before
    try:
        result = _submit_with_progress(req, settings, do_submit)
    except (SubmitError, AnnotationError, ValueError) as exc:
        fail(str(exc))
        return
    verb = "created" if result.created else "resumed"
    mode = "ran in-process" if settings.embedded else f"enqueued {result.batches} batch(es) on queue 'gpu'"
    console.print(
        f"run [bold]{run}[/] (id {result.run_id}) {verb}: {result.images} images, {result.new_images} new, "
        f"{result.annotated} annotated, {result.pending} pending; {mode}"
    )
    if wait and not settings.embedded:
        wait_for_run(result.run_id, settings)
    print_status(run, settings, as_json=False)
    end_of_run(run, settings, wait=wait)


def end_of_run(run: str, settings: Settings, *, wait: bool) -> None:
    """The exit status of a submission: 3 when the run paused itself; with ``wait`` (``--wait``, embedded runs
    too), 1 when images of the run failed (the count in the last line); else 0."""
    from pixelperfect.monitor import run_status

    info = run_status(run, settings)
    if info.get("state") == "paused":
        err.print(f"run {run} paused: {info.get('state_reason') or 'no reason recorded'}; fix it and submit the run "
                  "again to resume", markup=False, highlight=False)  # fmt: skip
        raise typer.Exit(EXIT_PAUSED)
    failed = info["images"].get("failed", 0)
    if wait and failed:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(info["failures"].items()))
        err.print(f"run {run}: {failed} image(s) failed ({reasons}); `pixelperfect status {run}` lists them, "
                  f"`pixelperfect retry {run}` retries them", markup=False, highlight=False)  # fmt: skip
        raise typer.Exit(EXIT_FAILED_IMAGES)


def _print_plan(req: Any, settings: Settings) -> None:
    """``submit --dry-run``: the plan's lines (:mod:`pixelperfect.producer.dryrun`); nothing registered."""
    from pixelperfect.inputs.annotations import AnnotationError
    from pixelperfect.producer.dryrun import plan
    from pixelperfect.producer.intake import SubmitError

    try:
        found = plan(req, settings)
    except (SubmitError, AnnotationError, ValueError) as exc:
        fail(str(exc))
        return
    for line in found.lines():
        console.print(line, highlight=False)


def parse_concept_variants(concepts: list[str], texts: list[str]) -> tuple[tuple[str, ...], ...]:
    """``--concept-variants PHRASE=SYN1|SYN2`` -> per ``--concept``, its synonyms (in the concepts' order)."""
    out: dict[str, list[str]] = {c.strip(): [] for c in concepts}
    for text in texts:
        phrase, eq, rest = text.partition("=")
        if not eq or phrase.strip() not in out:
            raise ValueError(f"--concept-variants {text!r}: expected PHRASE=SYNONYM|SYNONYM for a given --concept")
        out[phrase.strip()].extend(s.strip() for s in rest.split("|"))
    return tuple(tuple(v) for v in out.values())


def _submit_with_progress(req: Any, settings: Settings, do_submit: Any) -> Any:
    if not settings.embedded or not sys.stderr.isatty():
        return do_submit(req, settings)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as progress:
        task = progress.add_task(f"run {req.run}", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return do_submit(req, settings, on_progress=update)


def wait_for_run(run_id: int, settings: Settings, timeout: float = 24 * 3600) -> None:
    """Poll the database each second until run ``run_id`` has no queued image, is no longer active (paused,
    cancelled), or ``timeout`` seconds passed."""
    from pixelperfect.db import control, repo
    from pixelperfect.db.models import RunState
    from pixelperfect.db.session import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as session:
            if repo.status_counts(session, run_id=run_id)["queued"] == 0:
                return
            if control.run_state(session, run_id=run_id) != RunState.active.value:
                return  # paused (or cancelled): nothing will move until it is submitted again
        time.sleep(1.0)


def worker(
    hostname: str | None = typer.Option(None, help="Celery node name, e.g. gpu0@%h"),
    concurrency: int = typer.Option(1, min=1, help="worker processes (one per GPU is right)"),
    queues: str = typer.Option(
        "gpu,seg", help="comma-separated queues to consume (gpu: batches, seg: DICOM-SEG building, train)"
    ),
    loglevel: str = typer.Option("INFO"),
    pool: str = typer.Option("prefork", help="prefork (default) or solo"),
) -> None:
    """Start a Celery worker on the broker of PIXELPERFECT_BROKER_URL."""
    settings = command_settings()
    if settings.embedded:
        fail("PIXELPERFECT_BROKER_URL is not set: a worker needs a broker (e.g. redis://localhost:6379/0)")
    preflight.before_worker(settings)  # database, broker, store: the one that fails is named
    from pixelperfect.worker.app import app as celery_app

    argv = [
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "-E",
        "--pool",
        pool,
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    celery_app.worker_main(argv)


def status(
    run: str = typer.Argument(..., help="run name"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    watch: bool = typer.Option(False, help="live progress until the run has no queued images"),
    interval: float = typer.Option(2.0, min=0.1, help="seconds between refreshes with --watch"),
    max_seconds: float | None = typer.Option(None, min=0, help="--watch: stop after this many seconds"),
) -> None:
    """Images by status, segments, images/s and ETA of a run (--watch: live bar with stage time shares)."""
    settings = command_settings()
    if watch:
        from pixelperfect.monitor import watch_run

        try:
            watch_run(run, settings, interval=interval, console=console, max_seconds=max_seconds)
        except LookupError as exc:
            fail(str(exc))
        return
    print_status(run, settings, as_json=as_json)


def print_status(run: str, settings: Settings, *, as_json: bool) -> None:
    """The run's counts, rate, ETA and failures as a table (or, ``as_json``, the machine-readable subset)."""
    from pixelperfect.monitor import run_status

    try:
        info = run_status(run, settings)
    except LookupError as exc:
        fail(str(exc))
        return
    if as_json:
        subset = {
            "run": info["run"],
            "images": info["images"],
            "segments": info["segments"],
            "failures": info["failures"],
            "images_per_s": info["images_per_s"],
            "eta_s": info["eta_s"],
            "state": info.get("state"),
            "state_reason": info.get("state_reason"),
        }
        console.print_json(json.dumps(subset))
        return
    counts = info["images"]
    table = Table(title=f"run {run} — {info['model']} × {', '.join(info['variants'])}")
    for col in ("queued", "done", "failed", "segments", "images/s", "ETA"):
        table.add_column(col, justify="right")
    rate, eta = info["images_per_s"], info["eta_s"]
    table.add_row(
        str(counts["queued"]),
        str(counts["done"]),
        str(counts["failed"]),
        str(info["segments"]),
        f"{rate:.2f}" if rate else "–",
        f"{eta:.0f}s" if eta is not None else "–",
    )
    console.print(table)
    if info["failures"]:
        console.print("failures: " + ", ".join(f"{r}: {n}" for r, n in sorted(info["failures"].items())))
    if info.get("state") == "paused":
        console.print(f"paused: {info.get('state_reason') or 'no reason recorded'} (submit the run again to resume)",
                      markup=False, highlight=False)  # fmt: skip
    elif info.get("state") not in (None, "active"):
        console.print(f"state: {info.get('state')}", markup=False, highlight=False)
    from pixelperfect.training.tracking import describe_progress, read_progress

    progress = read_progress(settings, run)
    if progress:
        console.print(describe_progress(progress))


@dataclass
class RetryResult:
    run_id: int
    run: str
    images: int  # images set back to queued
    batches: int
    reasons: dict[str, int]  # failure reason -> images, before the retry


def retry_failed(
    run: str, settings: Settings, *, reason: str | None = None, batch_size: int | None = None
) -> RetryResult:
    """Set the failed images of ``run`` (only those failed with ``reason``, if given) back to queued and enqueue
    them in batches of ``batch_size`` (default ``settings.batch_size``); embedded, run them here.

    The rows are requeued before the messages are published: should publishing fail, the images stay queued and
    re-submitting the run (which enqueues every queued image) picks them up. Raises ``LookupError`` for an
    unknown run and ``ValueError`` for a bad ``batch_size``.
    """
    from pixelperfect.db import repo
    from pixelperfect.db.models import ImageStatus
    from pixelperfect.db.session import session_scope
    from pixelperfect.embedded import dispatch

    size = batch_size or settings.batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, not {size}")
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=run)
        if row is None:
            raise LookupError(f"no run named {run!r} in the database")
        run_id = row.id
        reasons = repo.failure_counts(session, run_id=run_id)
        keys = repo.keys_with_status(session, run_id=run_id, statuses=[ImageStatus.failed.value], reason=reason)
        repo.requeue(session, run_id=run_id, keys=keys)
    batches = [keys[i : i + size] for i in range(0, len(keys), size)]
    if batches:
        dispatch(run_id, run, batches, settings)
    return RetryResult(run_id, run, len(keys), len(batches), reasons)


def retry(
    run: str = typer.Argument(..., help="run name"),
    reason: str | None = typer.Option(
        None, "--reason", help="only images failed with this reason (e.g. batch_error, missing); default: all"
    ),
    batch_size: int | None = typer.Option(None, min=1, help="images per task (default: PIXELPERFECT_BATCH_SIZE)"),
    wait: bool = typer.Option(False, help="distributed: wait until the retried images are done or failed"),
    seg: bool = typer.Option(False, "--seg", help="rebuild missing DICOM-SEGs from the stored masks (no model)"),
) -> None:
    """Re-enqueue the failed images of RUN, after fixing what failed them; they end done (or failed again).
    SEGs the --stow-to archive refused are sent again; --seg rebuilds missing DICOM-SEGs instead."""
    from pixelperfect.cli import archive

    settings = command_settings()
    preflight.before_reading(settings)
    try:
        if seg:
            return archive.retry_segs(run, settings)
        result = retry_failed(run, settings, reason=reason, batch_size=batch_size)
        archive.restow_refused(run, settings)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
        return
    before = ", ".join(f"{r}: {n}" for r, n in sorted(result.reasons.items())) or "none"
    if not result.images:
        console.print(
            f"run [bold]{run}[/]: no failed images{f' with reason {reason!r}' if reason else ''} (failures: {before})"
        )
        return
    mode = "ran in-process" if settings.embedded else f"enqueued {result.batches} batch(es) on queue 'gpu'"
    console.print(f"run [bold]{run}[/]: {result.images} failed image(s) re-queued ({before}); {mode}")
    if wait and not settings.embedded:
        wait_for_run(result.run_id, settings)
    print_status(run, settings, as_json=False)
    end_of_run(run, settings, wait=wait)
