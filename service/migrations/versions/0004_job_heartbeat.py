"""Running jobs have a heartbeat, so that a job whose worker died can be found and re-enqueued.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(
            op.f("ix_jobs_status_heartbeat_at"), ["status", "heartbeat_at"], unique=False
        )
    # A job running now was last seen alive at its last update.
    op.execute("UPDATE jobs SET heartbeat_at = updated_at WHERE status = 'running'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_status_heartbeat_at"))
        batch.drop_column("heartbeat_at")
