"""The migration history goes down to nothing and back up again (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db import Base, make_engine, upgrade
from service.db.engine import alembic_config


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
        assert queues == {"j1": "cpu", "j2": "cpu", "j3": "gpu"}
        assert shapes == [None]
    finally:
        engine.dispose()
