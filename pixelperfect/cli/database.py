"""``pixelperfect db upgrade``: the database schema, by Alembic migrations."""

from __future__ import annotations

import typer

from pixelperfect.cli.common import command_settings, console

db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Database schema (Alembic).")


def register(app: typer.Typer) -> None:
    """Add the ``db`` group to the ``pixelperfect`` command."""
    app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply Alembic migrations to PIXELPERFECT_DATABASE_URL."""
    from pixelperfect.db.migrate import current, upgrade

    settings = command_settings()
    upgrade(settings.database_url, revision)
    console.print(f"database at revision {current(settings.database_url)}")
