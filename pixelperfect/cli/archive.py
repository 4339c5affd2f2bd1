"""Archive commands: ``pixelperfect archive-phantoms OUT`` (phantom films stored as archives hold them, one folder
per DICOM transfer syntax), ``pixelperfect export RUN --format coco|csv --out FILE_OR_URL [--variant V]``, and the
SEG side of ``pixelperfect retry`` in ``cli/run.py`` (``--seg`` rebuilds missing DICOM-SEGs; a plain retry re-sends
refused STOW-RS).

``archive-phantoms`` writes ``OUT/<kind>/<id>.dcm`` and ``OUT/<kind>/masks/<id>.png`` for each kind of
:data:`pixelperfect.synthetic.archive_phantoms.ARCHIVE_KINDS` (explicit VR little endian, JPEG baseline 8-bit
1024², JPEG lossless SV1, JPEG 2000 lossless and lossy, JPEG-LS, RLE; 2800x2300 12-bit; MONOCHROME2 and MONOCHROME1
alternately); kinds whose encoder is not installed are skipped with the package they need.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pixelperfect import preflight
from pixelperfect.cli.common import command_settings, console, fail
from pixelperfect.config import Settings


def archive_phantoms(
    out: Path = typer.Argument(..., help="output directory"),
    n: int = typer.Option(2, min=1, help="films per kind"),
    kind: list[str] = typer.Option([], help="only these kinds (repeatable); default all"),
    seed: int = typer.Option(0, help="random seed (same seed, same films)"),
) -> None:
    """Phantom chest films as archive DICOMs, one folder per transfer syntax, with exact masks."""
    from pixelperfect.synthetic.archive_phantoms import ARCHIVE_KINDS, encoder_missing, write_archive

    unknown = [k for k in kind if k not in ARCHIVE_KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown kind {', '.join(unknown)}; kinds: {', '.join(ARCHIVE_KINDS)}")
    kinds = kind or list(ARCHIVE_KINDS)
    for name in kinds:
        missing = encoder_missing(ARCHIVE_KINDS[name])
        if missing:
            typer.echo(f"{name}: skipped, its encoder needs the package {missing}")
    written = write_archive(out, n, kinds=kinds, seed=seed)
    for name, paths in written.items():
        spec = ARCHIVE_KINDS[name]
        typer.echo(f"{name}: {len(paths)} files ({spec.shape[1]}x{spec.shape[0]}, {spec.bits}-bit) in {out / name}")


def export(
    run: str = typer.Argument(..., help="run name"),
    fmt: str = typer.Option("coco", "--format", help="coco (JSON, RLE masks) or csv (one row per segment)"),
    out: str = typer.Option(..., "--out", help="output file: a path, file:// or s3:// URL"),
    variant: str | None = typer.Option(None, "--variant", help="only this preprocessing variant"),
    deidentify: bool = typer.Option(
        False, "--deidentify", help="replace UIDs and keys by stable pseudonyms per run (PS3.15 basic profile)"
    ),
    mapping: str | None = typer.Option(
        None, "--mapping", help="where --deidentify writes pseudonym -> original (default OUT.mapping.csv)"
    ),
) -> None:
    """Export a run's segments for training pipelines: COCO RLE masks with scores, or a flat CSV (streamed)."""
    from pixelperfect.export import export_run

    settings = command_settings()
    preflight.before_reading(settings)
    try:
        stats = export_run(run, settings, fmt=fmt, out=out, variant=variant, deidentify=deidentify, mapping=mapping)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    console.print(f"run [bold]{run}[/]: {stats.images} images, {stats.annotations} segments -> {out}")
    if stats.mapping:
        console.print(f"pseudonyms -> originals in {stats.mapping}: keep it apart from the export")


def retry_segs(run: str, settings: Settings) -> None:
    """``retry RUN --seg``: rebuild the run's missing DICOM-SEGs from its stored masks, without the model."""
    from pixelperfect.worker.segretry import rebuild_segs

    report = rebuild_segs(run, settings)
    stow = (
        f"; sent to the archive: {report.stowed}, refused: {report.stow_failed}"
        if report.stowed + report.stow_failed
        else ""
    )
    console.print(f"run [bold]{run}[/]: {report.rebuilt} SEG(s) rebuilt, {report.failed} failed{stow}")
    if report.failed:
        raise typer.Exit(1)


def restow_refused(run: str, settings: Settings) -> None:
    """Part of a plain ``retry RUN``: send again the SEGs the run's ``--stow-to`` archive refused."""
    from pixelperfect.worker.segretry import restow

    report = restow(run, settings)
    if report.stowed + report.stow_failed:
        console.print(
            f"run [bold]{run}[/]: re-sent {report.stowed} SEG(s) to the archive, {report.stow_failed} still refused"
        )


def review(
    run: str = typer.Argument(..., help="run name"),
    below: list[str] = typer.Option(..., "--below", help="METRIC=VALUE, e.g. consistency_iou=0.8 (repeatable)"),
    out: str | None = typer.Option(None, "--out", help="the list as CSV (one row per segment below)"),
    stow_to: str | None = typer.Option(None, "--stow-to", help="send the KOS documents here (default: the run's)"),
) -> None:
    """Which images a person should look at: segments below thresholds as CSV, and (DICOM runs) one Key Object
    Selection document per study, titled "Of Interest", stored with the run and sent to the archive."""
    from pixelperfect.review import parse_below, review_run

    settings = command_settings()
    try:
        stats = review_run(run, settings, below=parse_below(below), out=out, stow_to=stow_to)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    console.print(
        f"run [bold]{run}[/]: {stats.images} image(s), {stats.segments} segment(s) below; {stats.studies} KOS "
        f"document(s), {stats.stowed} sent" + (f", {len(stats.refused)} refused" if stats.refused else "")
    )
    for error in stats.errors:
        console.print(f"  [yellow]{error}[/]")
    if stats.refused or stats.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("archive-phantoms")(archive_phantoms)
    app.command("export")(export)
    app.command("review")(review)
