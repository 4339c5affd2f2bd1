"""Archive commands: ``pixelperfect export RUN --format coco|csv --out FILE_OR_URL [--variant V]``, and the SEG side
of ``pixelperfect retry`` in ``cli/run.py`` (``--seg`` rebuilds missing DICOM-SEGs; a plain retry re-sends refused
STOW-RS)."""

from __future__ import annotations

import typer

from pixelperfect.cli.common import command_settings, console, fail
from pixelperfect.config import Settings


def export(
    run: str = typer.Argument(..., help="run name"),
    fmt: str = typer.Option("coco", "--format", help="coco (JSON, RLE masks) or csv (one row per segment)"),
    out: str = typer.Option(..., "--out", help="output file: a path, file:// or s3:// URL"),
    variant: str | None = typer.Option(None, "--variant", help="only this preprocessing variant"),
) -> None:
    """Export a run's segments for training pipelines: COCO RLE masks with scores, or a flat CSV (streamed)."""
    from pixelperfect.export import export_run

    settings = command_settings()
    try:
        stats = export_run(run, settings, fmt=fmt, out=out, variant=variant)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    console.print(f"run [bold]{run}[/]: {stats.images} images, {stats.annotations} segments -> {out}")


def retry_segs(run: str, settings: Settings) -> None:
    """``retry RUN --seg``: rebuild the run's missing DICOM-SEGs from its stored masks, without the model."""
    from pixelperfect.worker.segretry import rebuild_segs

    report = rebuild_segs(run, settings)
    stow = (
        f"; STOW-RS: {report.stowed} sent, {report.stow_failed} refused" if report.stowed + report.stow_failed else ""
    )
    console.print(f"run [bold]{run}[/]: {report.rebuilt} SEG(s) rebuilt, {report.failed} failed{stow}")
    if report.failed:
        raise typer.Exit(1)


def restow_refused(run: str, settings: Settings) -> None:
    """Part of a plain ``retry RUN``: send again the SEGs the run's STOW-RS target refused."""
    from pixelperfect.worker.segretry import restow

    report = restow(run, settings)
    if report.stowed + report.stow_failed:
        console.print(f"run [bold]{run}[/]: STOW-RS re-sent {report.stowed} SEG(s), {report.stow_failed} still refused")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
