"""Database fixtures: a test taking ``db_engine``, ``db_factory`` or ``db_session`` runs twice,
on SQLite and on PostgreSQL.

SQLite is a file in a temporary directory. PostgreSQL gets a fresh database per test module
(``privevo_test_<random>``, dropped afterwards) on the server named by
``PRIVEVO_TEST_POSTGRES_URL`` (default: the local server); when that server does not answer,
only the PostgreSQL variants are skipped.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from service.db.engine import make_engine, make_session_factory, upgrade
from tests.servers import REDIS, Server, answers

POSTGRES_URL = os.environ.get(
    "PRIVEVO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_answers(url: str) -> bool:
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), 1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of an empty database, fresh for each test module."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'privevo.sqlite3'}"
        return
    if not _postgres_answers(POSTGRES_URL):
        pytest.skip(f"PostgreSQL does not answer at {make_url(POSTGRES_URL).render_as_string()}")
    name = f"privevo_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on the migrated database."""
    upgrade(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_factory(db_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(db_engine)


@pytest.fixture
def db_session(db_factory: sessionmaker[Session]) -> Iterator[Session]:
    with db_factory() as session:
        yield session


@pytest.fixture(scope="module")
def server(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``privevo serve`` on SQLite and on PostgreSQL (the API tests run on both)."""
    if not answers(REDIS):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (make test starts one)")
    server = Server(tmp_path_factory.mktemp("service"), database_url=db_url)
    server.cli("keys", "create", "--tenant", "warmup")  # migrates the database
    server.start()
    yield server
    server.stop()
