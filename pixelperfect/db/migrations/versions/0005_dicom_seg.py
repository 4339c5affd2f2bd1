"""seg_objects: the DICOM-SEG of each image and variant, its build error and its STOW-RS state

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-01 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seg_objects",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("variant", sa.String(64), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=True),
        sa.Column("seg_error", sa.Text(), nullable=True),
        sa.Column("stow_status", sa.String(10), nullable=True),
        sa.Column("stow_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_id", "variant", name="uq_seg_objects_image_variant"),
    )
    op.create_index("ix_seg_objects_run", "seg_objects", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_seg_objects_run", table_name="seg_objects")
    op.drop_table("seg_objects")
