"""The ``pixelperfect`` command line, one module per command group, on top of every other layer.

``run`` (submit, worker, status, retry), ``runs`` (runs, cancel, delete), ``imaging`` (phantoms, tune, preview),
``archive`` (archive-phantoms, export; retry's SEG repairs), ``train``, ``convert`` (convert-checkpoint:
Meta-format SAM 2 ``.pt`` -> Hugging Face directory), ``report``, ``database`` (``db``) and
``demo``; ``common`` holds the consoles, ``fail`` and the settings helper. Each group module exposes
``register(app)``; importing this package loads no torch and no OpenCV (commands import what they need).
"""

from __future__ import annotations

import typer

from pixelperfect.cli import archive, convert, database, demo, imaging, report, run, runs, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # click's plain help: wraps at words and fits 80 columns (rich's panels truncate)
    help="Segment chest X-ray archives with SAM on a Celery/Redis queue, and measure how far to trust it.",
)

for _group in (imaging, archive, run, runs, database, demo, report, train, convert):
    _group.register(app)

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app()
