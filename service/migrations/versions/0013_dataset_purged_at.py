"""``datasets.purged_at``: when a delete finished deleting the dataset's files, so that a purge
a store failure cut short is finished later. Datasets deleted before this revision count as
purged when they were deleted.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE datasets SET purged_at = deleted_at WHERE deleted_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("purged_at")
