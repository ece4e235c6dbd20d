"""``vote_shards``: the completion record of each shard of a fanned-out vote.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
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


def downgrade() -> None:
    op.drop_table("vote_shards")
