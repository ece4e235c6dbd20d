"""Budgets follow records, not file bytes: budgets get ids of their own, datasets point at one,
every upload's records are kept as keyed digests, tenants get a digest key and optional limits
on the caps they may give.

Existing data carries over unchanged: each budget keyed by (tenant, sha256 of the bytes)
becomes one budget with the same caps, and every dataset of those bytes points at it. Datasets
uploaded before have no record digests, so they stay in their own budget; a later upload of the
same bytes still joins it (the gateway matches the sha256 too). Downgrading keys budgets by
bytes again: datasets of different bytes that share a merged budget get a budget each, with
the merged caps (their shared spending is no longer summed).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    connection = op.get_bind()
    op.create_table(
        "tenant_secrets",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("digest_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_secrets_tenant_id")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_secrets")),
    )
    tenants = connection.execute(sa.text("SELECT id, created_at FROM tenants")).all()
    if tenants:
        connection.execute(
            sa.text(
                "INSERT INTO tenant_secrets (tenant_id, digest_key, created_at) "
                "VALUES (:tenant_id, :key, :created_at)"
            ),
            [
                {"tenant_id": tenant_id, "key": secrets.token_bytes(32), "created_at": created}
                for tenant_id, created in tenants
            ],
        )
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("max_epsilon_cap", sa.Double(), nullable=True))
        batch.add_column(sa.Column("max_delta_cap", sa.Double(), nullable=True))

    old = connection.execute(
        sa.text("SELECT tenant_id, dataset_sha256, epsilon_cap, delta_cap, created_at FROM budgets")
    ).all()
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(op.f("fk_datasets_tenant_id_sha256"), type_="foreignkey")
        batch.add_column(sa.Column("budget_id", sa.String(length=40), nullable=True))
        batch.add_column(
            sa.Column("duplicate_records", sa.Integer(), server_default="0", nullable=False)
        )
    op.drop_table("budgets")
    _create_budgets()
    rows = [
        {
            "id": f"bud_{secrets.token_hex(16)}",
            "tenant_id": tenant_id,
            "sha256": sha256,
            "epsilon_cap": epsilon_cap,
            "delta_cap": delta_cap,
            "created_at": created,
        }
        for tenant_id, sha256, epsilon_cap, delta_cap, created in old
    ]
    if rows:
        connection.execute(
            sa.text(
                "INSERT INTO budgets (id, tenant_id, epsilon_cap, delta_cap, created_at) "
                "VALUES (:id, :tenant_id, :epsilon_cap, :delta_cap, :created_at)"
            ),
            rows,
        )
        connection.execute(
            sa.text(
                "UPDATE datasets SET budget_id = :id "
                "WHERE tenant_id = :tenant_id AND sha256 = :sha256"
            ),
            rows,
        )
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("budget_id", existing_type=sa.String(length=40), nullable=False)
        batch.create_foreign_key(
            op.f("fk_datasets_tenant_id_budget_id"),
            "budgets",
            ["tenant_id", "budget_id"],
            ["tenant_id", "id"],
        )
        batch.create_index(op.f("ix_datasets_budget_id"), ["budget_id"], unique=False)
        batch.create_check_constraint(
            op.f("ck_datasets_duplicate_records"), "duplicate_records >= 0"
        )
    op.create_table(
        "record_digests",
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "dataset_id"],
            ["datasets.tenant_id", "datasets.id"],
            name=op.f("fk_record_digests_tenant_id_dataset_id"),
        ),
        sa.PrimaryKeyConstraint("dataset_id", "digest", name=op.f("pk_record_digests")),
    )
    op.create_index(
        op.f("ix_record_digests_tenant_id_digest"),
        "record_digests",
        ["tenant_id", "digest"],
        unique=False,
    )
    _check_foreign_keys()


def downgrade() -> None:
    connection = op.get_bind()
    op.drop_index(op.f("ix_record_digests_tenant_id_digest"), table_name="record_digests")
    op.drop_table("record_digests")
    budgets = {
        budget_id: (epsilon_cap, delta_cap, created)
        for budget_id, epsilon_cap, delta_cap, created in connection.execute(
            sa.text("SELECT id, epsilon_cap, delta_cap, created_at FROM budgets")
        )
    }
    by_bytes: dict[tuple[str, str], tuple[float, float, object]] = {}
    for tenant_id, sha256, budget_id in connection.execute(
        sa.text("SELECT tenant_id, sha256, budget_id FROM datasets")
    ):
        epsilon_cap, delta_cap, created = budgets[budget_id]
        kept = by_bytes.get((tenant_id, sha256))
        if kept is not None:  # never two budgets for one file's bytes, but stay on the safe side
            epsilon_cap, delta_cap = min(epsilon_cap, kept[0]), min(delta_cap, kept[1])
        by_bytes[(tenant_id, sha256)] = (epsilon_cap, delta_cap, created)
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(op.f("ck_datasets_duplicate_records"), type_="check")
        batch.drop_index(op.f("ix_datasets_budget_id"))
        batch.drop_constraint(op.f("fk_datasets_tenant_id_budget_id"), type_="foreignkey")
        batch.drop_column("duplicate_records")
        batch.drop_column("budget_id")
    op.drop_table("budgets")
    op.create_table(
        "budgets",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=False),
        sa.Column("epsilon_cap", sa.Double(), nullable=False),
        sa.Column("delta_cap", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("delta_cap > 0 AND delta_cap < 1", name=op.f("ck_budgets_delta_cap")),
        sa.CheckConstraint("epsilon_cap > 0", name=op.f("ck_budgets_epsilon_cap")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_budgets_tenant_id")),
        sa.PrimaryKeyConstraint("tenant_id", "dataset_sha256", name=op.f("pk_budgets")),
    )
    if by_bytes:
        connection.execute(
            sa.text(
                "INSERT INTO budgets (tenant_id, dataset_sha256, epsilon_cap, delta_cap, "
                "created_at) VALUES (:tenant_id, :sha256, :epsilon_cap, :delta_cap, :created_at)"
            ),
            [
                {
                    "tenant_id": tenant_id,
                    "sha256": sha256,
                    "epsilon_cap": epsilon_cap,
                    "delta_cap": delta_cap,
                    "created_at": created,
                }
                for (tenant_id, sha256), (epsilon_cap, delta_cap, created) in by_bytes.items()
            ],
        )
    with op.batch_alter_table("datasets") as batch:
        batch.create_foreign_key(
            op.f("fk_datasets_tenant_id_sha256"),
            "budgets",
            ["tenant_id", "sha256"],
            ["tenant_id", "dataset_sha256"],
        )
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_delta_cap")
        batch.drop_column("max_epsilon_cap")
    op.drop_table("tenant_secrets")
    _check_foreign_keys()


def _create_budgets() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("epsilon_cap", sa.Double(), nullable=False),
        sa.Column("delta_cap", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("delta_cap > 0 AND delta_cap < 1", name=op.f("ck_budgets_delta_cap")),
        sa.CheckConstraint("epsilon_cap > 0", name=op.f("ck_budgets_epsilon_cap")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_budgets_tenant_id")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_budgets_tenant_id_id")),
    )


def _check_foreign_keys() -> None:
    """On SQLite the tables were copied with foreign keys off (see ``env.py``): check them all
    before the migration commits, so that a broken reference fails it instead of lingering."""
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"revision 0006 would leave broken foreign keys: {broken[:5]}")
