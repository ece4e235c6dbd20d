"""Alembic environment of the service's schema.

The database comes from the connection that :func:`service.db.engine.upgrade` passes in
``config.attributes["connection"]``, or, on the command line, from ``-x url=...``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from service.db.engine import make_engine
from service.db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Writes the UTC type as the plain column type, so migrations never import the models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_item=render_item,
        # SQLite can alter a table only by copying it; batch mode does that in later migrations.
        render_as_batch=connection.dialect.name == "sqlite",
    )


@contextmanager
def foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Turns SQLite's foreign keys off while migrations run.

    Batch mode alters a SQLite table by copying it and dropping the original, and with foreign
    keys on, SQLite refuses to drop a table that rows of another table reference (alembic's
    documented remedy is this pragma). It has no effect inside a transaction, so it is set on
    the driver's connection before the migration transaction begins; migrations that copy
    tables check the keys themselves (``PRAGMA foreign_key_check``) before they commit.
    """
    if connection.dialect.name != "sqlite" or connection.in_transaction():
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def url_from_command_line() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("name the database: alembic -c service/alembic.ini -x url=URL ...")
    return str(url)


def run_migrations() -> None:
    if context.is_offline_mode():
        context.configure(url=url_from_command_line(), target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection)
        with foreign_keys_off(connection), context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url_from_command_line())
    try:
        with engine.connect() as connection:
            configure(connection)
            with foreign_keys_off(connection), context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run_migrations()
