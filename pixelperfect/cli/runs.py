"""Steering runs: ``pixelperfect runs [--json]``, ``pixelperfect cancel RUN``, ``pixelperfect delete RUN``.

``status RUN`` stays the view of one run; ``runs`` is every run on one screen (two queries, no model import). The
work is in ``producer/lifecycle.py``.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from pixelperfect import preflight
from pixelperfect.cli.common import command_settings, console, fail


def runs(as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON")) -> None:
    """Every run: model, variants, created, state, images by status, images/s over its life."""
    from sqlalchemy import inspect

    from pixelperfect.db import control
    from pixelperfect.db.session import get_engine, session_scope

    settings = command_settings()
    overview = []
    if inspect(get_engine(settings.database_url)).has_table("runs"):
        with session_scope(settings.database_url) as session:
            overview = control.runs_overview(session)
    if as_json:
        console.print_json(json.dumps([r.as_dict() for r in overview]))
        return
    if not overview:
        console.print(f"no runs in {settings.database_url}")
        return
    table = Table(title=f"{len(overview)} run(s)")
    for col in ("run", "state", "model", "variants", "created (UTC)", "queued", "done", "failed", "cancelled"):
        table.add_column(col, justify="right" if col in ("queued", "done", "failed", "cancelled") else "left")
    table.add_column("images/s", justify="right")
    for r in overview:
        c = r.counts
        table.add_row(r.name, r.state, r.model, ", ".join(r.variants), f"{r.created_at:%Y-%m-%d %H:%M}",
                      str(c.get("queued", 0)), str(c.get("done", 0)), str(c.get("failed", 0)),
                      str(c.get("cancelled", 0)), f"{r.images_per_s:.2f}" if r.images_per_s else "–")  # fmt: skip
    console.print(table)
    for r in overview:
        if r.state_reason:
            console.print(f"{r.name} {r.state}: {r.state_reason}", markup=False, highlight=False)


def cancel(run: str = typer.Argument(..., help="run name")) -> None:
    """Cancel RUN: its queued images end `cancelled` and workers acknowledge its batches without model work;
    batches already on a GPU finish; a producer still submitting it stops. `submit` of the run resumes it."""
    from pixelperfect.producer.lifecycle import RunBusyError
    from pixelperfect.producer.lifecycle import cancel as do_cancel

    settings = command_settings()
    preflight.before_reading(settings)
    try:
        result = do_cancel(run, settings)
    except (LookupError, RunBusyError) as exc:
        fail(str(exc))
        return
    console.print(
        f"run [bold]{run}[/] cancelled: {result.cancelled} queued image(s) cancelled in {result.seconds:.2f}s; "
        f"{result.in_flight} in a worker's batch now will finish. `pixelperfect submit … --run {run}` resumes it."
    )


def delete(
    run: str = typer.Argument(..., help="run name"),
    keep_masks: bool = typer.Option(False, "--keep-masks", help="delete the rows only; keep mask and SEG objects"),
    yes: bool = typer.Option(False, "--yes", help="do not ask (required without a terminal)"),
) -> None:
    """Delete RUN: its rows and its mask and SEG objects (embedding caches stay). Refuses a run with queued
    images unless cancelled first, and one with images in a worker's batch. Interrupted, run it again. SEGs
    already sent to a PACS stay there and are listed in pixelperfect-RUN-stowed-segs.csv."""
    from pixelperfect.producer.lifecycle import RunBusyError
    from pixelperfect.producer.lifecycle import delete as do_delete

    settings = command_settings()
    preflight.before_reading(settings)
    if not yes:
        if not _interactive():
            fail(f"refusing to delete run {run!r} without --yes: no terminal to ask on")
        what = "its rows" + ("" if keep_masks else ", masks and SEG objects")
        if not typer.confirm(f"Delete run {run!r} ({what})?", default=False):
            fail("not deleted", code=1)
    try:
        result = do_delete(run, settings, keep_masks=keep_masks)
    except (LookupError, RunBusyError) as exc:
        fail(str(exc))
        return
    rate = f" ({result.objects_per_s:.0f} objects/s)" if result.objects else ""
    console.print(
        f"run [bold]{run}[/] deleted: {result.objects} object(s){rate}, {result.rows} row(s) in {result.seconds:.1f}s"
    )
    if result.stowed_list:
        console.print(
            f"{result.stowed} SEG(s) sent to a PACS stay there; listed (key, variant, SOPInstanceUID, target) in "
            f"{result.stowed_list}"
        )


def _interactive() -> bool:
    """Whether a person can answer a question (standard input is a terminal)."""
    return sys.stdin.isatty()


def register(app: typer.Typer) -> None:
    """Add ``runs``, ``cancel`` and ``delete`` to the ``pixelperfect`` command."""
    app.command("runs")(runs)
    app.command("cancel")(cancel)
    app.command("delete")(delete)
