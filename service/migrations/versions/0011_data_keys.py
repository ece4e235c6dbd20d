"""Encryption at rest: ``data_keys``, each scope's data key wrapped by the master key, and the
datasets' optional expiry (``datasets.expires_at``).

Datasets stored before this revision have no data key and no expiry; with encryption at rest
off (the default without a master key) nothing changes for them.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("upload_prefix", sa.String(length=1024), nullable=True),
        sa.Column("wrapped", sa.LargeBinary(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_data_keys")),
        sa.UniqueConstraint("upload_prefix", name=op.f("uq_data_keys_upload_prefix")),
    )
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index(op.f("ix_datasets_expires_at"), ["expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index(op.f("ix_datasets_expires_at"))
        batch.drop_column("expires_at")
    op.drop_table("data_keys")
