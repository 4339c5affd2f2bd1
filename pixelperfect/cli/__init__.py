"""The ``pixelperfect`` command line, one module per command group, on top of every other layer.

``run`` (submit, worker, status, retry), ``runs`` (runs, cancel, delete), ``imaging`` (phantoms, tune, preview),
``archive`` (archive-phantoms, export; retry's SEG repairs), ``train``, ``convert`` (convert-checkpoint:
Meta-format SAM 2 ``.pt`` -> Hugging Face directory), ``report``, ``database`` (``db``),
``doctor`` and ``demo``; ``common`` holds the consoles, ``fail``, the settings helper and the one error handler
(``GuardedGroup``: known failures as one line, ``--debug`` for the traceback). Each group module exposes
``register(app)``; importing this package loads no torch and no OpenCV (commands import what they need).
"""

from __future__ import annotations

import typer

from pixelperfect.cli import archive, common, convert, database, demo, doctor, imaging, report, run, runs, train

app = typer.Typer(
    cls=common.GuardedGroup,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # click's plain help: wraps at words and fits 80 columns (rich's panels truncate)
    help="Segment chest X-ray archives with SAM on a Celery/Redis queue, and measure how far to trust it.",
)


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help="show the traceback of expected failures too (or PIXELPERFECT_DEBUG=1)"
    ),
) -> None:
    """Segment chest X-ray archives with SAM on a Celery/Redis queue, and measure how far to trust it.

    Exit status: 0 done; 1 submit/retry --wait ended with failed images (or retry --seg left SEGs unbuilt); 2 an
    error said in one line (a bad option, an unknown run, a failed preflight, a service that refuses); 3 the run
    paused itself (its store or database refused writes: submit it again to resume)."""
    common.DEBUG = common.DEBUG or debug


for _group in (imaging, archive, run, runs, database, doctor, demo, report, train, convert):
    _group.register(app)

__all__ = ["app"]

if __name__ == "__main__":  # pragma: no cover
    app()
