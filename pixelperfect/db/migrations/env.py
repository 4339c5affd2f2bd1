"""Alembic environment: the connection comes from :mod:`pixelperfect.db.migrate`."""

from __future__ import annotations

from alembic import context

from pixelperfect.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    from pixelperfect.db.session import get_engine

    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    connection = get_engine(str(url)).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
