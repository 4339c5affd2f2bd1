"""``pixelperfect archive-phantoms OUT``: phantom films stored as archives hold them (DICOM transfer syntaxes).

Writes ``OUT/<kind>/<id>.dcm`` and ``OUT/<kind>/masks/<id>.png`` for each kind of
:data:`pixelperfect.archive_phantoms.ARCHIVE_KINDS` (explicit VR little endian, JPEG baseline 8-bit 1024², JPEG
lossless SV1, JPEG 2000 lossless and lossy, JPEG-LS, RLE; 2800x2300 12-bit; MONOCHROME2 and MONOCHROME1
alternately); kinds whose encoder is not installed are skipped with the package they need.
"""

from __future__ import annotations

from pathlib import Path

import typer


def archive_phantoms(
    out: Path = typer.Argument(..., help="output directory"),
    n: int = typer.Option(2, min=1, help="films per kind"),
    kind: list[str] = typer.Option([], help="only these kinds (repeatable); default all"),
    seed: int = typer.Option(0, help="random seed (same seed, same films)"),
) -> None:
    """Phantom chest films as archive DICOMs, one folder per transfer syntax, with exact masks."""
    from pixelperfect.archive_phantoms import ARCHIVE_KINDS, encoder_missing, write_archive

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


def register(app: typer.Typer) -> None:
    app.command("archive-phantoms")(archive_phantoms)
