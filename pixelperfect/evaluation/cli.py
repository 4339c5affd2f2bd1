"""``pixelperfect report``: the evaluation of one or more runs as HTML, JSON or CSV."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        runs: list[str] = typer.Argument(..., help="run names; the first is the baseline of run comparisons"),
        out: Path = typer.Option(..., "--out", help="output directory"),
        fmt: str = typer.Option("html", "--format", help="html (self-contained), json or csv"),
    ) -> None:
        """Summary, comparisons, calibration, detection, the consistency forest and a gallery of runs."""
        from pixelperfect.cli import _settings, console, fail
        from pixelperfect.evaluation.report import FORMATS, build_report

        if fmt not in FORMATS:
            fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        settings = _settings()
        try:
            path = build_report(runs, out, settings=settings, fmt=fmt)
        except LookupError as exc:
            fail(str(exc))
            return
        console.print(f"report: {path}")
