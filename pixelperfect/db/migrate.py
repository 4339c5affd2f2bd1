"""Alembic, driven from code: ``pixelperfect db upgrade`` and the producer call :func:`upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (idempotent; cheap when already there)."""
    from pixelperfect.db.session import get_engine

    config = alembic_config(url)
    with get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from pixelperfect.db.session import get_engine

    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str | None:
    """The newest revision of this code's migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def schema_revision(url: str, *, connect_timeout: float = 5) -> tuple[str | None, bool]:
    """``(revision, has tables)`` of the database at ``url``, on a connection of its own that gives up after
    ``connect_timeout`` seconds (PostgreSQL; SQLite opens a file): preflight asks before anything is written.
    ``has tables``: the ``runs`` table exists (also in a schema made without Alembic, e.g. ``create_all``)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.pool import NullPool

    from pixelperfect.db.session import get_engine

    if url.startswith("sqlite"):
        engine = get_engine(url)
        dispose = False
    else:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": max(1, int(connect_timeout))})
        dispose = True
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
            revision = MigrationContext.configure(connection).get_current_revision()
            return revision, inspect(connection).has_table("runs")
    finally:
        if dispose:
            engine.dispose()
