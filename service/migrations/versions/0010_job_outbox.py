"""The job outbox: ``job_messages``, one row per job holding its current broker message.

Jobs queued or running when this revision runs were enqueued by the code before it, straight to
the broker: they get a row marked sent (generation 1, sent when the job was created), so the
sweeper looks for their messages like any other; the row's task id is not the one their
message carries, but the sweeper finds a job's messages by the job id they name. Final jobs
need no message and get no row.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "job_messages",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("queue", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("missing_since", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'sent', 'void')", name=op.f("ck_job_messages_state")
        ),
        sa.CheckConstraint(
            "generation >= 1 AND attempts >= 0", name=op.f("ck_job_messages_counts")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_messages_job_id")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_messages")),
    )
    op.create_index(op.f("ix_job_messages_state_sent_at"), "job_messages", ["state", "sent_at"])
    op.execute(
        "INSERT INTO job_messages (job_id, queue, generation, state, created_at, sent_at, "
        "attempts) SELECT id, queue, 1, 'sent', created_at, created_at, 1 FROM jobs "
        "WHERE status IN ('queued', 'running')"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_job_messages_state_sent_at"), table_name="job_messages")
    op.drop_table("job_messages")
