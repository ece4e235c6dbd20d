"""Datasets remember the text and label columns they were uploaded with.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("text_column", sa.String(255), nullable=False, server_default="text")
        )
        batch.add_column(
            sa.Column("label_column", sa.String(255), nullable=False, server_default="label")
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("label_column")
        batch.drop_column("text_column")
