"""Held-out datasets and evaluated jobs: a dataset has a role, "private" (the input of jobs,
drawing on a budget) or "heldout" (real data that only scores jobs' synthetic data, NOT DP, for
the owner: no budget, so ``budget_id`` becomes nullable, with a check that only held-out data
lacks one); a job may name a held-out dataset of its own tenant (``eval_dataset_id``, a
composite foreign key).

Existing datasets are private, as they were. Downgrading is refused while any held-out dataset
exists: revision 0007 cannot represent a dataset without a budget.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

_ROLES = "role IN ('private', 'heldout')"
_BUDGET = (
    "(role = 'private' AND budget_id IS NOT NULL) OR "
    "(role = 'heldout' AND budget_id IS NULL AND user_column IS NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(
            sa.Column("role", sa.String(length=8), nullable=False, server_default="private")
        )
        batch.alter_column("budget_id", existing_type=sa.String(length=40), nullable=True)
        batch.create_check_constraint(op.f("ck_datasets_role"), _ROLES)
        batch.create_check_constraint(op.f("ck_datasets_budget"), _BUDGET)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("eval_dataset_id", sa.String(length=40), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_tenant_id_eval_dataset_id"),
            "datasets",
            ["tenant_id", "eval_dataset_id"],
            ["tenant_id", "id"],
        )
        batch.create_index(op.f("ix_jobs_eval_dataset_id"), ["eval_dataset_id"])
    _check_foreign_keys()


def downgrade() -> None:
    connection = op.get_bind()
    heldout = connection.execute(
        sa.text("SELECT count(*) FROM datasets WHERE role = 'heldout'")
    ).scalar_one()
    if heldout:
        raise RuntimeError(
            f"{heldout} dataset(s) are held-out, without a budget, which revision 0007 cannot "
            "represent. Downgrade refused"
        )
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_eval_dataset_id"))
        batch.drop_constraint(op.f("fk_jobs_tenant_id_eval_dataset_id"), type_="foreignkey")
        batch.drop_column("eval_dataset_id")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(op.f("ck_datasets_budget"), type_="check")
        batch.drop_constraint(op.f("ck_datasets_role"), type_="check")
        batch.alter_column("budget_id", existing_type=sa.String(length=40), nullable=False)
        batch.drop_column("role")
    _check_foreign_keys()


def _check_foreign_keys() -> None:
    """On SQLite the tables were copied with foreign keys off (see ``env.py``): check them all
    before the migration commits, so that a broken reference fails it instead of lingering."""
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"revision 0008 would leave broken foreign keys: {broken[:5]}")
