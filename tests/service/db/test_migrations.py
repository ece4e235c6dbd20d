"""The migration history goes down to nothing and back up again (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db import (
    Base,
    BudgetExceeded,
    TenantSecret,
    append_event,
    create_api_key,
    create_dataset,
    make_engine,
    make_session_factory,
    read_transaction,
    remaining,
    reserve,
    tenant_digest_key,
    upgrade,
)
from service.db.engine import alembic_config
from service.digests import RecordDigests


def test_downgrade_to_base_and_upgrade_again(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
            connection.commit()
            assert inspect(connection).get_table_names() == ["alembic_version"]
        upgrade(db_url)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert context.get_current_revision() is not None
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_jobs_made_before_revision_0005_get_the_queue_of_their_api(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0004")
            connection.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 'acme', :now)"),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO budgets (tenant_id, dataset_sha256, epsilon_cap, delta_cap, "
                    "created_at) VALUES ('t', :sha, 1.0, 1e-3, :now)"
                ),
                {"sha": "0" * 64, "now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO datasets (id, tenant_id, name, modality, record_count, labels, "
                    "sha256, storage_path, created_at) VALUES ('d', 't', 'n', 'text', 1, '[]', "
                    ":sha, 'uploads/x', :now)"
                ),
                {"sha": "0" * 64, "now": now},
            )
            for job_id, spec in (("j1", {}), ("j2", {"api": "grammar"}), ("j3", {"api": "llm"})):
                connection.execute(
                    text(
                        "INSERT INTO jobs (id, tenant_id, dataset_id, spec, status, iteration, "
                        "iterations, epsilon_reserved, delta_reserved, epsilon_spent, "
                        "delta_spent, created_at, updated_at) VALUES (:id, 't', 'd', :spec, "
                        "'queued', 0, 1, 1.0, 1e-6, 0, 0, :now, :now)"
                    ),
                    {"id": job_id, "spec": json.dumps(spec), "now": now},
                )
            connection.commit()
            command.upgrade(config, "head")
            connection.commit()
            queues = dict(connection.execute(text("SELECT id, queue FROM jobs")).all())
            shapes = connection.execute(text("SELECT image_shape FROM datasets")).scalars().all()
            messages = connection.execute(
                text("SELECT job_id, queue, state, generation FROM job_messages ORDER BY job_id")
            ).all()
        assert queues == {"j1": "cpu", "j2": "cpu", "j3": "gpu"}
        assert shapes == [None]
        # Queued before the outbox (revision 0010): their messages were sent then, and the
        # sweeper looks for them like any other.
        assert [tuple(m) for m in messages] == [
            ("j1", "cpu", "sent", 1),
            ("j2", "cpu", "sent", 1),
            ("j3", "gpu", "sent", 1),
        ]
    finally:
        engine.dispose()


def test_budgets_made_before_revision_0006_keep_their_spending_and_their_bytes(
    db_url: str,
) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    sha, other_sha = "1" * 64, "2" * 64
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0005")
            connection.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t6', 'acme', :now)"),
                {"now": now},
            )
            for digest, cap in ((sha, 1.0), (other_sha, 2.0)):
                connection.execute(
                    text(
                        "INSERT INTO budgets (tenant_id, dataset_sha256, epsilon_cap, delta_cap, "
                        "created_at) VALUES ('t6', :sha, :cap, 1e-3, :now)"
                    ),
                    {"sha": digest, "cap": cap, "now": now},
                )
            # Two uploads of the same bytes, and one of other bytes.
            for dataset_id, digest in (("d1", sha), ("d2", sha), ("d3", other_sha)):
                connection.execute(
                    text(
                        "INSERT INTO datasets (id, tenant_id, name, modality, record_count, "
                        "labels, sha256, storage_path, created_at) VALUES "
                        "(:id, 't6', 'n', 'text', 1, '[]', :sha, 'uploads/x', :now)"
                    ),
                    {"id": dataset_id, "sha": digest, "now": now},
                )
            connection.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, dataset_id, spec, status, iteration, "
                    "iterations, epsilon_reserved, delta_reserved, epsilon_spent, delta_spent, "
                    "epsilon_charged, delta_charged, created_at, updated_at, queue) VALUES "
                    "('j6', 't6', 'd1', '{}', 'succeeded', 1, 1, 0.75, 1e-6, 0.5, 1e-6, 0.75, "
                    "1e-6, :now, :now, 'cpu')"
                ),
                {"now": now},
            )
            connection.commit()
            command.upgrade(config, "head")
            connection.commit()
    finally:
        engine.dispose()
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            for dataset_id in ("d1", "d2"):
                status = remaining(session, "t6", dataset_id)
                assert (status.epsilon_cap, status.epsilon_spent) == (1.0, 0.75)
            assert remaining(session, "t6", "d3").epsilon_remaining == 2.0
            # A new upload of the old bytes (it has record digests, the old ones have none) joins.
            again = create_dataset(
                session, "t6", name="again", modality="text", record_count=1, labels=[], sha256=sha,
                storage_path="uploads/y", epsilon_cap=1.0, delta_cap=1e-3,
                digests=RecordDigests(b"\x07" * 32, 0),
            )  # fmt: skip
            assert remaining(session, "t6", again.id).epsilon_remaining == 0.25
            with pytest.raises(BudgetExceeded):
                reserve(session, "t6", again.id, 0.5, 1e-6, None, {}, iterations=1)
            # The tenant of that time got a digest key of its own from the migration.
            with read_transaction(session):
                key = session.get_one(TenantSecret, "t6").digest_key
            assert len(key) == 32 and tenant_digest_key(session, "t6") == key
    finally:
        engine.dispose()


def test_datasets_made_before_revision_0007_are_record_level(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0006")
            connection.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t7', 'acme', :now)"),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO budgets (id, tenant_id, epsilon_cap, delta_cap, created_at) "
                    "VALUES ('b7', 't7', 1.0, 1e-3, :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO datasets (id, tenant_id, name, modality, record_count, labels, "
                    "sha256, budget_id, storage_path, created_at) VALUES ('d7', 't7', 'n', "
                    "'text', 1, '[]', :sha, 'b7', 'uploads/x', :now)"
                ),
                {"sha": "7" * 64, "now": now},
            )
            connection.commit()
            command.upgrade(config, "head")
            connection.commit()
            units = connection.execute(
                text(
                    "SELECT d.privacy_unit, d.user_column, b.privacy_unit FROM datasets d "
                    "JOIN budgets b ON b.id = d.budget_id WHERE d.id = 'd7'"
                )
            ).one()
        assert tuple(units) == ("record", None, "record")
        with make_session_factory(engine)() as session:
            # Its records' user-level upload is a dataset and a budget apart.
            by_user = create_dataset(
                session, "t7", name="users", modality="text", record_count=1, labels=[],
                sha256="7" * 64, storage_path="uploads/y", epsilon_cap=1.0, delta_cap=1e-3,
                user_column="user",
            )  # fmt: skip
            assert by_user.budget_id != "b7"
        # Revision 0006 cannot represent user-level data: going back is refused, changing
        # nothing.
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            with pytest.raises(RuntimeError, match="1 dataset\\(s\\) are user-level"):
                command.downgrade(config, "0006")
            connection.rollback()
            columns = {column["name"] for column in inspect(connection).get_columns("datasets")}
            assert {"privacy_unit", "user_column"} <= columns
    finally:
        engine.dispose()


def test_datasets_made_before_revision_0008_are_private(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0007")
            connection.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t8', 'acme', :now)"),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO budgets (id, tenant_id, epsilon_cap, delta_cap, created_at) "
                    "VALUES ('b8', 't8', 1.0, 1e-3, :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO datasets (id, tenant_id, name, modality, record_count, labels, "
                    "sha256, budget_id, storage_path, created_at) VALUES ('d8', 't8', 'n', "
                    "'text', 1, '[]', :sha, 'b8', 'uploads/x', :now)"
                ),
                {"sha": "8" * 64, "now": now},
            )
            connection.commit()
            command.upgrade(config, "head")
            connection.commit()
            role = connection.execute(text("SELECT role FROM datasets WHERE id = 'd8'")).one()
        assert tuple(role) == ("private",)
        assert remaining(make_session_factory(engine)(), "t8", "d8").epsilon_remaining == 1.0
        with make_session_factory(engine)() as session:
            heldout = create_dataset(
                session, "t8", name="held", modality="text", record_count=1, labels=[],
                sha256="9" * 64, storage_path="uploads/y", role="heldout",
            )  # fmt: skip
            assert heldout.budget_id is None
        # Revision 0007 cannot represent data without a budget: going back is refused.
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            with pytest.raises(RuntimeError, match="1 dataset\\(s\\) are held-out"):
                command.downgrade(config, "0007")
            connection.rollback()
            columns = {column["name"] for column in inspect(connection).get_columns("datasets")}
            assert "role" in columns
    finally:
        engine.dispose()


def test_events_made_before_revision_0009_are_numbered_per_job(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0008")
            connection.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t9', 'acme', :now)"),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO budgets (id, tenant_id, epsilon_cap, delta_cap, created_at) "
                    "VALUES ('b9', 't9', 1.0, 1e-3, :now)"
                ),
                {"now": now},
            )
            connection.execute(
                text(
                    "INSERT INTO datasets (id, tenant_id, name, modality, record_count, labels, "
                    "sha256, budget_id, storage_path, created_at) VALUES ('d9', 't9', 'n', "
                    "'text', 1, '[]', :sha, 'b9', 'uploads/x', :now)"
                ),
                {"sha": "9" * 64, "now": now},
            )
            for job_id in ("j9a", "j9b"):
                connection.execute(
                    text(
                        "INSERT INTO jobs (id, tenant_id, dataset_id, spec, status, iteration, "
                        "iterations, epsilon_reserved, delta_reserved, epsilon_spent, "
                        "delta_spent, created_at, updated_at) VALUES (:id, 't9', 'd9', '{}', "
                        "'queued', 0, 1, 1.0, 1e-6, 0, 0, :now, :now)"
                    ),
                    {"id": job_id, "now": now},
                )
            # Interleaved, as two running jobs write them.
            for job_id in ("j9a", "j9b", "j9a", "j9a", "j9b"):
                connection.execute(
                    text(
                        "INSERT INTO job_events (job_id, kind, payload, created_at) "
                        "VALUES (:id, 'log', '{}', :now)"
                    ),
                    {"id": job_id, "now": now},
                )
            connection.commit()
            command.upgrade(config, "head")
            connection.commit()
            rows = connection.execute(
                text("SELECT job_id, seq FROM job_events WHERE job_id LIKE 'j9%' ORDER BY id")
            ).all()
        assert [tuple(row) for row in rows] == [
            ("j9a", 1), ("j9b", 1), ("j9a", 2), ("j9a", 3), ("j9b", 2)
        ]  # fmt: skip
        with make_session_factory(engine)() as session:
            assert append_event(session, "j9b", "log", {}).seq == 3
            key, _ = create_api_key(session, "t9")
            assert key.expires_at is None
    finally:
        engine.dispose()
