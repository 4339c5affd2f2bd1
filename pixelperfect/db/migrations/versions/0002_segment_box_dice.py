"""segments.box_dice: the prompt box's own Dice against the ground truth

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 01:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: rows written before it have no value (NULL), as segments without ground truth
    op.add_column("segments", sa.Column("box_dice", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:  # SQLite rebuilds the table; PostgreSQL drops the column
        batch.drop_column("box_dice")
