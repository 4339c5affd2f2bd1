"""hot updates: images pages keep room for the producer's and the workers' stamps (PostgreSQL fillfactor 85)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:00:00

Every image row is updated in place several times while it is not yet done: ``published_at`` when its message is
in the broker, the lease columns when a worker claims, renews and releases it. None of those columns is indexed,
so PostgreSQL can write the new row version on the same page without touching any index (a heap-only tuple) -- if
the page has room. ``COPY`` fills pages to 100 % by default, so each stamp moved the row to another page and added
an entry to all three indexes of ``images`` (issue 24). With ``fillfactor = 85`` a page keeps 15 % free: room for
the stamps of its rows (about 20 of ~130 bytes each), and the pruning of the dead versions frees it again. Only
pages written from now on are affected. SQLite has no such setting: nothing to do there.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE images SET (fillfactor = 85)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE images RESET (fillfactor)")
