"""The migration history goes down to nothing and back up again (SQLite and PostgreSQL)."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

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
