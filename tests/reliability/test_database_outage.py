"""A database outage answers 503 with Retry-After, never a 500, and the gateway recovers when
the database is back. The PostgreSQL stopped here is the tests' own (``own_postgres``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.reliability.conftest import (
    OwnPostgres,
    OwnRedis,
    key_for,
    new_database,
    start_server,
)
from tests.servers import Server
from tests.service.test_api import npz_bytes, upload


@pytest.fixture(scope="module")
def on_own_postgres(
    tmp_path_factory: pytest.TempPathFactory, own_redis: OwnRedis, own_postgres: OwnPostgres
) -> Iterator[Server]:
    url = new_database(own_postgres)
    server = start_server(tmp_path_factory.mktemp("outage"), own_redis, url)
    yield server
    server.stop()


def test_an_outage_is_503_with_retry_after_and_the_gateway_recovers(
    on_own_postgres: Server, own_postgres: OwnPostgres, figures: list[str]
) -> None:
    with on_own_postgres.client(key_for(on_own_postgres, "olga")) as olga:
        dataset = upload(olga, npz_bytes(2, offset=80))
        assert dataset.status_code == 201, dataset.text
        body = {"dataset_id": dataset.json()["id"], "epsilon": 0.05}
        assert olga.get("/v1/jobs").status_code == 200
        own_postgres.stop()
        try:
            answers = {
                "GET /v1/jobs": olga.get("/v1/jobs"),
                "POST /v1/jobs": olga.post("/v1/jobs", json=body),
                "GET /v1/datasets": olga.get("/v1/datasets"),
                "GET /readyz": httpx.get(f"{on_own_postgres.url}/readyz"),
            }
        finally:
            own_postgres.start()
        statuses = {name: answer.status_code for name, answer in answers.items()}
        assert set(statuses.values()) == {503}, statuses
        for name, answer in answers.items():
            assert int(answer.headers["Retry-After"]) > 0, name
            assert "database" in answer.text, name
        started = time.monotonic()
        recovered = olga.get("/v1/jobs")  # the pool's pre-ping replaces dead connections
        assert recovered.status_code == 200, recovered.text
        created = olga.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        figures.append(
            f"database outage: {statuses}; first answer after restart in "
            f"{time.monotonic() - started:.2f} s"
        )
