"""evaluation indexes: status/progress on images; best and worst cases on segments

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 06:30:00

``pixelperfect status`` counts a run's images by status, sums their segments and reads the first and last finish
time in one grouped query; with these four columns in one index it is an index-only scan of the run's entries
(no segments read, no table pages once vacuumed). It replaces ``ix_images_run_status`` (its leading columns), so
the queries that used that one (queued keys, failures by reason, the report's done filter) use this one.

The report's gallery takes each run's best and worst segments by Dice (or by score without ground truth):
``(run_id, dice)`` and ``(run_id, score)`` turn that ``ORDER BY … LIMIT`` into a few index entries instead of a
sort of the run's segments (about 3 s a query at a million images).
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_images_run_status_progress", "images", ["run_id", "status", "finished_at", "n_segments"])
    op.drop_index("ix_images_run_status", table_name="images")
    op.create_index("ix_segments_run_dice", "segments", ["run_id", "dice"])
    op.create_index("ix_segments_run_score", "segments", ["run_id", "score"])


def downgrade() -> None:
    op.drop_index("ix_segments_run_score", table_name="segments")
    op.drop_index("ix_segments_run_dice", table_name="segments")
    op.create_index("ix_images_run_status", "images", ["run_id", "status"])
    op.drop_index("ix_images_run_status_progress", table_name="images")
