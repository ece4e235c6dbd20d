"""Engines, sessions, write transactions and schema migrations for SQLite and PostgreSQL.

Every function of :mod:`service.db.repository` and :mod:`service.db.budget` runs one
transaction of its own on a session that is not in one, and returns detached rows. Reads use
:func:`read_transaction`; writes use :func:`write_transaction`, which on SQLite starts with
``BEGIN IMMEDIATE``: the database's single writer lock is taken up front, so two writers cannot
both read the old state and then both write (and a deferred transaction that reads, then writes
after another writer committed fails at once instead of waiting). On PostgreSQL the same
guarantee comes from ``SELECT ... FOR UPDATE`` on the row being guarded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL: Final = "sqlite:///privevo.sqlite3"
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"

# Seconds a SQLite writer waits for the lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S: Final = 30.0

# Execution option asking the SQLite begin hook for BEGIN IMMEDIATE.
_IMMEDIATE: Final = "privevo_begin_immediate"


def make_engine(url: str = DEFAULT_URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    SQLite connections get write-ahead logging (readers never block the writer), foreign keys
    (off by default in SQLite), a busy timeout, and transaction control taken from the
    ``sqlite3`` driver so that SQLAlchemy emits BEGIN itself: the driver's legacy mode would
    run SELECTs outside any transaction and could not start one with BEGIN IMMEDIATE.

    Args:
        url: database URL; SQLite must be a file (WAL needs one).
        **kwargs: passed to :func:`sqlalchemy.create_engine`.

    Raises:
        ValueError: an in-memory SQLite URL.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(f"SQLite needs a database file, got {url!r}")
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **kwargs)
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_sqlite_transaction)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit (the service returns them)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_transaction(session: Session) -> Iterator[Session]:
    """A transaction that serialises with every other write transaction it could conflict with.

    On SQLite it starts with BEGIN IMMEDIATE, which serialises all writers of the file. On
    PostgreSQL the caller must also lock the rows it guards with ``with_for_update()``. See
    :func:`read_transaction` for what happens to the session.
    """
    with _transaction(session, immediate=True):
        yield session


@contextmanager
def read_transaction(session: Session) -> Iterator[Session]:
    """A plain transaction, committed when the block ends and rolled back if it raises.

    The session's identity map is emptied when the transaction starts and when it ends, so
    every row is read fresh from the database and the objects handed out are detached
    snapshots: still readable after the transaction, never expired or refreshed behind the
    caller's back by a later commit or rollback on the same session.

    Raises:
        RuntimeError: the session is in a transaction already (its work would be committed or
            rolled back by surprise), or expires objects on commit (they could not be read
            after it; use :func:`make_session_factory`).
    """
    with _transaction(session, immediate=False):
        yield session


@contextmanager
def _transaction(session: Session, *, immediate: bool) -> Iterator[None]:
    if session.in_transaction():
        raise RuntimeError(
            "service.db functions run their own transaction: commit or roll back the session first"
        )
    if session.expire_on_commit:
        raise RuntimeError("service.db needs sessions from make_session_factory (no expiry)")
    session.expunge_all()
    try:
        with session.begin():
            if immediate:
                session.connection(execution_options={_IMMEDIATE: True})
            yield
    finally:
        session.expunge_all()


def alembic_config() -> Config:
    """The alembic configuration of the service's migrations, without any ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrates the database at ``url`` to ``revision`` (default: the latest).

    The migration runs on a connection of :func:`make_engine`, so SQLite gets the same
    foreign-key and transaction settings as the service.
    """
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
    finally:
        engine.dispose()


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # WAL's default NORMAL can lose the last commits on power loss; a lost release row
        # would be an unaccounted release, so every commit is synced.
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _begin_sqlite_transaction(connection: Any) -> None:
    immediate = connection.get_execution_options().get(_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
