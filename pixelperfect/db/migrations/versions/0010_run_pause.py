"""a run pauses itself: runs.state_reason (state 'paused' needs no change: runs.state is a string)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("state_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), never a batch rebuild of ``runs``: on SQLite that drops
    # the old table, and its ON DELETE CASCADE would empty images, segments and seg_objects (see 0009)
    op.drop_column("runs", "state_reason")
