"""``pixelperfect report``: the evaluation of one or more runs as HTML, JSON or CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from pixelperfect import preflight
from pixelperfect.cli.common import command_settings, console, fail


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``pixelperfect`` command."""
    app.command("report")(report)


def report(
    runs: list[str] = typer.Argument(..., help="run names; the first is the baseline of run comparisons"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    fmt: str = typer.Option("html", "--format", help="html (self-contained), json or csv"),
) -> None:
    """Summary, comparisons, calibration, detection, the consistency forest and a gallery of runs."""
    from pixelperfect.evaluation.build import FORMATS, build_report

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    settings = command_settings()
    preflight.before_reading(settings)  # a fresh database: one line, not "no such table"
    try:
        path = build_report(runs, out, settings=settings, fmt=fmt)
    except LookupError as exc:
        fail(str(exc))
    console.print(f"report: {path}")
