"""Jobs carry the queue their task goes to, decided at reservation, so the gateway and the
stale-job sweeper send it by name without asking the worker code; datasets carry their image
shape (public schema), so the gateway refuses a job whose generator cannot make such images.
Datasets uploaded before have none: their jobs are checked for it when they run.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# The simulators of revision 0004's time ran on the cpu queue, every other API on gpu.
_CPU_APIS = ("drawtext", "grammar")


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("image_shape", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("queue", sa.String(length=16), nullable=False, server_default="cpu")
        )
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    connection = op.get_bind()
    gpu = [
        job_id
        for job_id, spec in connection.execute(sa.select(jobs.c.id, jobs.c.spec))
        if (spec or {}).get("api", "drawtext") not in _CPU_APIS
    ]
    if gpu:
        connection.execute(
            sa.text("UPDATE jobs SET queue = 'gpu' WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": gpu},
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("image_shape")
