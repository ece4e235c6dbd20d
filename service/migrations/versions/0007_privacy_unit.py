"""Datasets and budgets get a unit of privacy: "record", or "user" for an upload that names a
user column (kept with the dataset, so its workers load each record's user). A dataset's budget
must be of its own unit (a composite foreign key), so record-level and user-level charges are
never summed against one cap.

Existing datasets and budgets are record-level, as they were. Downgrading is refused while any
user-level dataset exists: revision 0006 would run its jobs at the record level, spending a
budget whose cap was set for users on a weaker guarantee.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_UNITS = "privacy_unit IN ('record', 'user')"
_DATASET_UNIT = (
    "(privacy_unit = 'user' AND user_column IS NOT NULL) OR "
    "(privacy_unit = 'record' AND user_column IS NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(op.f("fk_datasets_tenant_id_budget_id"), type_="foreignkey")
    with op.batch_alter_table("budgets") as batch:
        batch.add_column(_unit_column())
        batch.drop_constraint(op.f("uq_budgets_tenant_id_id"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_budgets_tenant_id_id_privacy_unit"), ["tenant_id", "id", "privacy_unit"]
        )
        batch.create_check_constraint(op.f("ck_budgets_privacy_unit"), _UNITS)
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(_unit_column())
        batch.add_column(sa.Column("user_column", sa.String(length=255), nullable=True))
        batch.create_foreign_key(
            op.f("fk_datasets_tenant_id_budget_id_privacy_unit"),
            "budgets",
            ["tenant_id", "budget_id", "privacy_unit"],
            ["tenant_id", "id", "privacy_unit"],
        )
        batch.create_check_constraint(op.f("ck_datasets_privacy_unit"), _DATASET_UNIT)
    _check_foreign_keys()


def downgrade() -> None:
    connection = op.get_bind()
    users = connection.execute(
        sa.text("SELECT count(*) FROM datasets WHERE privacy_unit = 'user'")
    ).scalar_one()
    if users:
        raise RuntimeError(
            f"{users} dataset(s) are user-level, which revision 0006 cannot represent: their "
            "jobs would run at the record level against a cap set for users. Downgrade refused"
        )
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(op.f("ck_datasets_privacy_unit"), type_="check")
        batch.drop_constraint(
            op.f("fk_datasets_tenant_id_budget_id_privacy_unit"), type_="foreignkey"
        )
        batch.drop_column("user_column")
        batch.drop_column("privacy_unit")
    with op.batch_alter_table("budgets") as batch:
        batch.drop_constraint(op.f("ck_budgets_privacy_unit"), type_="check")
        batch.drop_constraint(op.f("uq_budgets_tenant_id_id_privacy_unit"), type_="unique")
        batch.create_unique_constraint(op.f("uq_budgets_tenant_id_id"), ["tenant_id", "id"])
        batch.drop_column("privacy_unit")
    with op.batch_alter_table("datasets") as batch:
        batch.create_foreign_key(
            op.f("fk_datasets_tenant_id_budget_id"),
            "budgets",
            ["tenant_id", "budget_id"],
            ["tenant_id", "id"],
        )
    _check_foreign_keys()


def _unit_column() -> sa.Column[str]:
    return sa.Column("privacy_unit", sa.String(length=8), nullable=False, server_default="record")


def _check_foreign_keys() -> None:
    """On SQLite the tables were copied with foreign keys off (see ``env.py``): check them all
    before the migration commits, so that a broken reference fails it instead of lingering."""
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"revision 0007 would leave broken foreign keys: {broken[:5]}")
