"""The gateway's edges: per-job event numbers, key expiry, per-tenant quotas, upload sizes.

* ``job_events.seq`` numbers each job's events 1, 2, 3... and becomes their public id and
  cursor (the table-wide id told every tenant how many events all others had made). Existing
  events are numbered in their id order; the unique (job_id, seq) pair replaces the
  (job_id, id) index.
* ``api_keys.expires_at``: a key is refused from then on (NULL: never).
* ``tenants.max_queued_jobs`` and ``tenants.max_stored_bytes``: a tenant's own quotas (NULL:
  the installation's).
* ``datasets.size_bytes``: the stored upload's size, counted against the storage quota.
  Uploads stored before this revision count 0 (the database does not see the files).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE job_events SET seq = (SELECT count(*) FROM job_events AS earlier "
        "WHERE earlier.job_id = job_events.job_id AND earlier.id <= job_events.id)"
    )
    with op.batch_alter_table("job_events") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.drop_index(op.f("ix_job_events_job_id_id"))
        batch.create_unique_constraint(op.f("uq_job_events_job_id_seq"), ["job_id", "seq"])
        batch.create_check_constraint(op.f("ck_job_events_seq"), "seq >= 1")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("size_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("size_bytes")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_stored_bytes")
        batch.drop_column("max_queued_jobs")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_constraint(op.f("ck_job_events_seq"), type_="check")
        batch.drop_constraint(op.f("uq_job_events_job_id_seq"), type_="unique")
        batch.create_index(op.f("ix_job_events_job_id_id"), ["job_id", "id"])
        batch.drop_column("seq")
