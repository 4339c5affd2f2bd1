"""``pixelperfect doctor [SOURCE]``: every preflight check of this configuration in one table (setting, address,
result), for a user to try the settings before starting anything. Nothing is migrated; the store check writes a
marker object and deletes it."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from pixelperfect.cli.common import EXIT_ERROR, command_settings, console


def register(app: typer.Typer) -> None:
    """Add ``doctor`` to the ``pixelperfect`` command."""
    app.command("doctor")(doctor)


def doctor(
    source: str | None = typer.Argument(None, help="also check that this source lists (s3://, file://, PACS)"),
    as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
) -> None:
    """Check the database, broker and results store of this configuration (and SOURCE): one row each with its
    setting, address (no password) and result; exit status 2 when any check fails."""
    from pixelperfect.preflight import doctor as run_checks

    settings = command_settings()
    checks = run_checks(settings, source=source)
    if as_json:
        console.print_json(json.dumps([c.__dict__ for c in checks]))
    else:
        table = Table(title="pixelperfect doctor")
        for col in ("check", "setting", "address", "result"):
            table.add_column(col)
        for c in checks:
            mark = "[green]ok[/]" if c.ok else "[bold red]FAILED[/]"
            table.add_row(c.what, c.setting, c.address, f"{mark} {c.result}")
        console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_ERROR)
