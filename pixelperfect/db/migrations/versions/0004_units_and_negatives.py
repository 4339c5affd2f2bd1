"""segments.surface_unit (mm or px for NSD and HD95); images.labelled (labelled negatives count in the RSNA metric)

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: rows written before it keep NULL (segments: px, as they were computed; images: unknown)
    op.add_column("segments", sa.Column("surface_unit", sa.String(length=2), nullable=True))
    op.add_column("images", sa.Column("labelled", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # a plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 has it): a batch rebuild of ``images`` would drop the old
    # table, and SQLite's ON DELETE CASCADE would take every segment with it
    op.drop_column("images", "labelled")
    op.drop_column("segments", "surface_unit")
