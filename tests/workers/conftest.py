"""Fixtures of the worker tests: the service's database fixtures (SQLite and PostgreSQL), a
service home and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.service.conftest import db_engine, db_factory, db_url
from tests.workers.support import REDIS_URL, Home

__all__ = ["db_engine", "db_factory", "db_url"]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home.create(tmp_path)


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The test Redis database, emptied before and after the test; skips without Redis."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        pytest.skip(f"Redis does not answer at {REDIS_URL} (set PRIVEVO_TEST_REDIS_URL)")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
