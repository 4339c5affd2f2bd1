"""DICOM SR (TID 1500) beside each SEG; the per-run salt of de-identified exports

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 02:00:00

``seg_objects`` gains the SR of its image and variant (``--output png,dicom-seg,dicom-sr``): where it is stored
(``sr_key``, a full URL), its SOPInstanceUID, why it could not be built (``sr_error``; the image stays ``done`` and
its SEG stays valid) and whether the STOW target has it (``sr_stow_status``: ``stored`` | ``failed`` | NULL).
``runs.deid_salt``: the secret of ``export --deidentify``'s pseudonyms, drawn at the run's first de-identified
export and kept, so the pseudonyms of one run are stable across exports (NULL until then).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


_SR_COLUMNS = (
    ("sr_key", sa.Text()),
    ("sr_sop_instance_uid", sa.String(64)),
    ("sr_error", sa.Text()),
    ("sr_stow_status", sa.String(10)),
    ("sr_stow_error", sa.Text()),
)


def upgrade() -> None:
    for name, kind in _SR_COLUMNS:
        op.add_column("seg_objects", sa.Column(name, kind, nullable=True))
    op.add_column("runs", sa.Column("deid_salt", sa.String(64), nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch rebuild of ``runs`` on SQLite drops the old table,
    # and its ON DELETE CASCADE empties images, segments and seg_objects (tests/db/test_migrations.py catches it)
    op.drop_column("runs", "deid_salt")
    for name, _ in reversed(_SR_COLUMNS):
        op.drop_column("seg_objects", name)
