"""``vote_shards`` becomes ``shards``: the completion records of every piece of a job's work
fanned out over workers, the vote (step 0) and the generation calls of an iteration (steps 1,
2, ...), keyed by (job, iteration, step, shard). Iteration 0 (the first samples) may now have
rows. Existing rows are the votes' (step 0).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = (
    "job_id, iteration, shard, shards, synthetic_sha256, opened_at, claimed_by, claimed_at, "
    "done_at, partial, backend"
)


def upgrade() -> None:
    op.create_table(
        "shards",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("shards", sa.Integer(), nullable=False),
        sa.Column("synthetic_sha256", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=255), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("partial", sa.String(length=32), nullable=True),
        sa.Column("backend", sa.String(length=64), nullable=True),
        sa.CheckConstraint("iteration >= 0", name=op.f("ck_shards_iteration")),
        sa.CheckConstraint("step >= 0", name=op.f("ck_shards_step")),
        sa.CheckConstraint("shard >= 0 AND shard < shards", name=op.f("ck_shards_shard")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_shards_job_id")),
        sa.PrimaryKeyConstraint("job_id", "iteration", "step", "shard", name=op.f("pk_shards")),
    )
    op.execute(f"INSERT INTO shards (step, {COLUMNS}) SELECT 0, {COLUMNS} FROM vote_shards")
    op.drop_table("vote_shards")


def downgrade() -> None:
    op.create_table(
        "vote_shards",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("shards", sa.Integer(), nullable=False),
        sa.Column("synthetic_sha256", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=255), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("partial", sa.String(length=32), nullable=True),
        sa.Column("backend", sa.String(length=64), nullable=True),
        sa.CheckConstraint("iteration >= 1", name=op.f("ck_vote_shards_iteration")),
        sa.CheckConstraint("shard >= 0 AND shard < shards", name=op.f("ck_vote_shards_shard")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_vote_shards_job_id")),
        sa.PrimaryKeyConstraint("job_id", "iteration", "shard", name=op.f("pk_vote_shards")),
    )
    op.execute(
        f"INSERT INTO vote_shards ({COLUMNS}) SELECT {COLUMNS} FROM shards "
        "WHERE step = 0 AND iteration >= 1"
    )
    op.drop_table("shards")
