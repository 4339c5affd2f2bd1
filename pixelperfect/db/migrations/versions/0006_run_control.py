"""run control: runs.state (cancel, delete), image leases and published_at, the model_work record

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-01 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # runs written before this migration are active (server default fills them)
    op.add_column("runs", sa.Column("state", sa.String(length=12), server_default="active", nullable=False))
    op.add_column("runs", sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("images", sa.Column("lease_owner", sa.String(length=64), nullable=True))
    op.add_column("images", sa.Column("lease_worker", sa.String(length=255), nullable=True))
    op.add_column("images", sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True))
    op.add_column("images", sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "model_work",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_work_run", "model_work", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_model_work_run", table_name="model_work")
    op.drop_table("model_work")
    with op.batch_alter_table("images") as batch:  # SQLite rebuilds the table; PostgreSQL drops the columns
        for column in ("published_at", "lease_expires", "lease_worker", "lease_owner"):
            batch.drop_column(column)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("state_changed_at")
        batch.drop_column("state")
