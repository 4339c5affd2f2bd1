"""The ``pixelperfect`` command: demo, phantoms, submit, worker, status, db (and the commands other modules add)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from pixelperfect.config import Settings, get_settings, use_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic).")
app.add_typer(db_app, name="db")
# Piped output (CI logs, scripts) gets 140 columns instead of rich's 80, so tables keep their headers.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 140)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    base = get_settings()
    values = {k: v for k, v in overrides.items() if v is not None}
    settings = base.model_copy(update=values) if values else base
    use_settings(settings)
    return settings


@app.command()
def phantoms(
    out: Path = typer.Argument(..., help="output directory (images/, masks/, labels.csv)"),
    n: int = typer.Option(16, "--n", min=1, help="number of phantom X-rays"),
    seed: int = typer.Option(0, help="random seed (same seed, same phantoms)"),
    size: int = typer.Option(1024, min=64, help="image side in pixels"),
    fmt: str = typer.Option("png", "--format", help="png or dicom"),
) -> None:
    """Write synthetic chest X-rays with exact opacity masks and RSNA-format boxes."""
    from pixelperfect.phantoms import write_phantoms

    if fmt not in ("png", "dicom"):
        fail(f"--format must be png or dicom, not {fmt!r}")
    made = write_phantoms(out, n, seed=seed, size=size, fmt=fmt)  # type: ignore[arg-type]
    boxes = sum(len(p.boxes) for p in made)
    console.print(
        f"wrote {len(made)} phantoms ({boxes} opacity boxes) to {out}/images, masks in {out}/masks, "
        f"labels in {out}/labels.csv"
    )


@app.command()
def submit(
    source: str = typer.Argument(..., help="images: s3://bucket/prefix or file://dir"),
    run: str = typer.Option(..., "--run", help="run name (re-submitting a run resumes it)"),
    annotations: str | None = typer.Option(None, help="box annotations file (path or URL)"),
    annotations_format: str = typer.Option("rsna", help="rsna (patientId,x,y,width,height,Target) or csv"),
    gt_masks: str | None = typer.Option(None, help="ground-truth masks named by image stem (URL or dir)"),
    variant: list[str] = typer.Option(["raw"], "--variant", help="preprocessing variant name or spec; repeat"),
    model: str | None = typer.Option(None, help="sam_vit_b, sam_vit_l, sam_vit_h, medsam, sam_tiny, grabcut"),
    checkpoint: str | None = typer.Option(None, help="model weights: path or s3:// URL"),
    batch_size: int | None = typer.Option(None, min=1, help="images per task"),
    consistency_k: int = typer.Option(4, min=0, help="perturbed boxes per prompt for consistency"),
    seed: int = typer.Option(0, help="seed of the box perturbations"),
    prompts: str | None = typer.Option(
        None, help="boxes | points | auto (default: auto for a SAM run without annotations, else boxes)"
    ),
    points: str | None = typer.Option(None, help="--prompts points: CSV key,x,y[,label] (path or URL)"),
    manifest: str | None = typer.Option(None, help="keys to process, one per line (path or URL), instead of listing"),
    nsd_tolerance: float = typer.Option(2.0, min=0, help="px tolerance of the normalised surface distance"),
    points_per_side: int = typer.Option(16, min=1, max=128, help="--prompts auto: grid points per side"),
    lung_only: bool = typer.Option(True, help="--prompts auto: keep only masks inside the lung field"),
    wait: bool = typer.Option(False, help="distributed: wait until every image is done or failed"),
) -> None:
    """Create or resume a run and enqueue its images (embedded when PIXELPERFECT_BROKER_URL is unset)."""
    from pixelperfect.pipeline.options import AutoSettings, ProcessSettings
    from pixelperfect.pipeline.prompts import Jitter
    from pixelperfect.producer.annotations import AnnotationError
    from pixelperfect.producer.enqueue import SubmitError, SubmitRequest
    from pixelperfect.producer.enqueue import submit as do_submit

    settings = _settings()
    req = SubmitRequest(
        source=source,
        run=run,
        variants=variant,
        model=model,
        checkpoint=checkpoint,
        annotations=annotations,
        annotations_format=annotations_format,
        gt_masks=gt_masks,
        batch_size=batch_size,
        prompts=prompts,
        points=points,
        manifest=manifest,
        process=ProcessSettings(
            jitter=Jitter(k=consistency_k),
            min_area=settings.min_area,
            seed=seed,
            nsd_tolerance=nsd_tolerance,
            auto=AutoSettings(points_per_side=points_per_side, lung_only=lung_only),
        ),
    )
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
        _wait(result.run_id, run, settings)
    _print_status(run, settings, as_json=False)


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


def _wait(run_id: int, run: str, settings: Settings, timeout: float = 24 * 3600) -> None:
    from pixelperfect.db import repo
    from pixelperfect.db.session import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as session:
            if repo.status_counts(session, run_id=run_id)["queued"] == 0:
                return
        time.sleep(1.0)


@app.command()
def worker(
    hostname: str | None = typer.Option(None, help="Celery node name, e.g. gpu0@%h"),
    concurrency: int = typer.Option(1, min=1, help="worker processes (one per GPU is right)"),
    queues: str = typer.Option("gpu", help="comma-separated queues to consume"),
    loglevel: str = typer.Option("INFO"),
    pool: str = typer.Option("prefork", help="prefork (default) or solo"),
) -> None:
    """Start a Celery worker on the broker of PIXELPERFECT_BROKER_URL."""
    settings = _settings()
    if settings.embedded:
        fail("PIXELPERFECT_BROKER_URL is not set: a worker needs a broker (e.g. redis://localhost:6379/0)")
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


@app.command()
def status(
    run: str = typer.Argument(..., help="run name"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    watch: bool = typer.Option(False, help="live progress until the run has no queued images"),
    interval: float = typer.Option(2.0, min=0.1, help="seconds between refreshes with --watch"),
    max_seconds: float | None = typer.Option(None, min=0, help="--watch: stop after this many seconds"),
) -> None:
    """Images by status, segments, images/s and ETA of a run (--watch: live bar with stage time shares)."""
    settings = _settings()
    if watch:
        from pixelperfect.monitor import watch_run

        try:
            watch_run(run, settings, interval=interval, console=console, max_seconds=max_seconds)
        except LookupError as exc:
            fail(str(exc))
        return
    _print_status(run, settings, as_json=as_json)


def run_status(run: str, settings: Settings) -> dict[str, Any]:
    from sqlalchemy import inspect

    from pixelperfect.db import repo
    from pixelperfect.db.session import get_engine, session_scope

    if not inspect(get_engine(settings.database_url)).has_table("runs"):
        raise LookupError(f"no run named {run!r}: {settings.database_url} has no PixelPerfect tables yet")
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=run)
        if row is None:
            raise LookupError(f"no run named {run!r} in {settings.database_url}")
        counts = repo.status_counts(session, run_id=row.id)
        first, last, finished = repo.progress_window(session, run_id=row.id)
        rate = None
        if first and last and finished > 1 and last > first:
            rate = (finished - 1) / (last - first).total_seconds()
        return {
            "run": run,
            "images": counts,
            "segments": repo.segment_count(session, run_id=row.id),
            "failures": repo.failure_counts(session, run_id=row.id),
            "images_per_s": rate,
            "eta_s": counts["queued"] / rate if rate and counts["queued"] else (0.0 if not counts["queued"] else None),
            "model": row.model,
            "variants": [v["name"] for v in row.variants],
        }


def _print_status(run: str, settings: Settings, *, as_json: bool) -> None:
    try:
        info = run_status(run, settings)
    except LookupError as exc:
        fail(str(exc))
        return
    if as_json:
        keys = ("run", "images", "segments", "failures", "images_per_s", "eta_s")
        console.print_json(json.dumps({k: info[k] for k in keys}))
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
    from pixelperfect.training.tracking import describe_progress, read_progress

    progress = read_progress(settings, run)
    if progress:
        console.print(describe_progress(progress))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply Alembic migrations to PIXELPERFECT_DATABASE_URL."""
    from pixelperfect.db.migrate import current, upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    console.print(f"database at revision {current(settings.database_url)}")


@app.command()
def demo(
    workdir: Path = typer.Option(Path("pixelperfect-demo"), help="where phantoms, masks, the DB and reports go"),
    n: int = typer.Option(12, min=1, help="phantom X-rays"),
    size: int = typer.Option(512, min=64, help="phantom side in pixels"),
    variant: list[str] = typer.Option(["raw", "clahe"], "--variant"),
    model: list[str] = typer.Option(["sam_tiny", "grabcut"], "--model"),
    tune: bool = typer.Option(True, help="also fine-tune sam_tiny's decoder on other phantoms and evaluate it"),
) -> None:
    """Phantoms -> embedded runs (one per model) -> a table of score and Dice per model and variant."""
    from pixelperfect.demo import run_demo

    os.environ.pop("PIXELPERFECT_BROKER_URL", None)
    workdir = workdir.resolve()
    settings = _settings().model_copy(
        update={
            "broker_url": None,
            "database_url": f"sqlite:///{workdir / 'pixelperfect.db'}",
            "store_url": f"file://{workdir / 'store'}",
        }
    )
    use_settings(settings)
    run_demo(workdir, settings, n=n, size=size, variants=variant, models=model, console=console, tune=tune)


def _register_plugins() -> None:
    """Commands that live beside their subsystems (imaging, evaluation, training)."""
    import importlib

    for module in (
        "pixelperfect.cli_imaging",
        "pixelperfect.cli_ops",
        "pixelperfect.evaluation.cli",
        "pixelperfect.training.cli",
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_register_plugins()

if __name__ == "__main__":  # pragma: no cover
    app()
