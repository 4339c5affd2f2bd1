"""the producer stamps published_at when it registers an image: runs.publish_checkpoint says which stamps a message
backs (issue 24: one write per image instead of two)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("publish_checkpoint", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # plain DROP COLUMN, never a SQLite batch rebuild of ``runs`` (its ON DELETE CASCADE would empty images; see 0009)
    op.drop_column("runs", "publish_checkpoint")
