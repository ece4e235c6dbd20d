"""The migrations build exactly the schema the ORM models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import CheckConstraint, Engine, inspect, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from service.db import (
    Base,
    Budget,
    Dataset,
    Job,
    RecordDigest,
    Tenant,
    get_job,
    make_engine,
    read_transaction,
    reserve,
    upgrade,
    write_transaction,
)
from tests.service.db.support import new_dataset, new_tenant


def test_migration_matches_metadata(db_engine: Engine, db_url: str) -> None:
    with db_engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
        inspector = inspect(connection)
        assert set(inspector.get_table_names()) == {*Base.metadata.tables, "alembic_version"}
        # Autogenerate does not compare CHECK constraints; their names must still all be there.
        for name, table in Base.metadata.tables.items():
            declared = {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
            assert {c["name"] for c in inspector.get_check_constraints(name)} == declared
    upgrade(db_url)  # at head already: a no-op, not an error


def test_sqlite_connections_are_configured(db_engine: Engine) -> None:
    if db_engine.dialect.name != "sqlite":
        pytest.skip("checks SQLite pragmas")
    with db_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_foreign_keys_and_checks_are_enforced(db_session: Session) -> None:
    tenant, other = new_tenant(db_session), new_tenant(db_session, "other")
    dataset = new_dataset(db_session, tenant)
    theirs = new_dataset(db_session, other)
    bad_rows = [
        Budget(tenant_id="ten_missing", epsilon_cap=1.0, delta_cap=1e-5),
        Budget(tenant_id=tenant, epsilon_cap=-1.0, delta_cap=1e-5),
        Budget(tenant_id=tenant, epsilon_cap=1.0, delta_cap=1.0),
        # A dataset drawing on another tenant's budget.
        Dataset(
            tenant_id=tenant,
            name="x",
            modality="image",
            record_count=1,
            labels=[],
            sha256="0" * 64,
            budget_id=theirs.budget_id,
            storage_path="x",
        ),
        # A record digest of one tenant filed under another tenant's dataset.
        RecordDigest(tenant_id=tenant, dataset_id=theirs.id, digest=b"\0" * 32),
        # A job of one tenant on another tenant's dataset.
        Job(
            tenant_id=other,
            dataset_id=dataset.id,
            spec={},
            iterations=1,
            epsilon_reserved=0.1,
            delta_reserved=1e-6,
        ),
        Job(
            tenant_id=tenant,
            dataset_id=dataset.id,
            spec={},
            status="paused",
            iterations=1,
            epsilon_reserved=0.1,
            delta_reserved=1e-6,
        ),
    ]
    for row in bad_rows:
        with pytest.raises(IntegrityError), write_transaction(db_session):
            db_session.add(row)


def test_times_are_utc_aware_after_a_round_trip(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.1, 1e-6, None, {}, iterations=2)
    db_session.expunge_all()
    stored = get_job(db_session, tenant, job.id)
    assert stored.created_at.tzinfo is UTC
    assert abs(stored.created_at - job.created_at) < timedelta(milliseconds=1)
    with write_transaction(db_session):
        moscow = datetime(2025, 1, 1, 3, tzinfo=timezone(timedelta(hours=3)))
        db_session.add(Tenant(id="ten_tz", name="tz", created_at=moscow))
    db_session.expunge_all()
    with read_transaction(db_session):
        assert db_session.get_one(Tenant, "ten_tz").created_at == datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(StatementError, match="naive"), write_transaction(db_session):
        db_session.add(Tenant(id="ten_naive", name="naive", created_at=datetime(2025, 1, 1)))


def test_write_transaction_refuses_an_open_or_expiring_session(
    db_session: Session, db_engine: Engine
) -> None:
    db_session.execute(text("SELECT 1"))
    with pytest.raises(RuntimeError, match="own transaction"), write_transaction(db_session):
        pass
    db_session.rollback()
    with (
        Session(db_engine) as expiring,
        pytest.raises(RuntimeError, match="make_session_factory"),
        write_transaction(expiring),
    ):
        pass


def test_in_memory_sqlite_is_refused() -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="file"):
            make_engine(url)
