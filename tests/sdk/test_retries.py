"""Retries, through a real loopback proxy to the real server that fails on purpose."""

from __future__ import annotations

import uuid
from contextlib import closing
from pathlib import Path

import pytest
from privevo_client import (
    Client,
    InvalidRequest,
    PrivevoAPIError,
    PrivevoConnectionError,
    QuotaExceeded,
    ServiceUnavailable,
)

from service import db
from tests.sdk.conftest import write_digits_npz
from tests.sdk.proxy import DROP, flaky_proxy
from tests.servers import Server


def test_lost_create_responses_are_retried_with_one_key_and_reserve_once(
    server: Server, alice: Client, alice_key: str, tmp_path: Path
):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 1, offset=90), epsilon_cap=1.0
    )
    with flaky_proxy(server.url) as proxy, Client(proxy.url, alice_key, backoff=0.2) as client:
        proxy.faults = [503, 503]
        proxy.retry_after = {1: "1"}
        job = client.jobs.create(dataset, epsilon=0.3, iterations=1, num_samples=10)

    assert [(s.method, s.path) for s in proxy.seen] == [("POST", "/v1/jobs")] * 3
    keys = {s.idempotency_key for s in proxy.seen}
    assert len(keys) == 1
    assert uuid.UUID(keys.pop()).version == 4
    first, second, third = (s.at for s in proxy.seen)
    assert second - first >= 0.1  # backoff: at least half of 0.2 s
    assert third - second >= 1.0  # the server's Retry-After: 1
    # Every attempt reached the server; it reserved the budget once and returned one job.
    budget = alice.datasets.budget(dataset.id)
    assert budget.epsilon_reserved == pytest.approx(0.3)
    assert budget.active_jobs == 1
    assert alice.jobs.get(job.id).epsilon_reserved == 0.3


def test_dropped_connections_are_retried_for_reads(
    server: Server, alice: Client, alice_key: str, tmp_path: Path
):
    dataset = alice.datasets.upload(
        write_digits_npz(tmp_path / "d.npz", 1, offset=99), epsilon_cap=1.0
    )
    with flaky_proxy(server.url) as proxy, Client(proxy.url, alice_key, backoff=0.01) as client:
        proxy.faults = [DROP, 502]
        assert client.datasets.get(dataset.id) == dataset
    assert len(proxy.seen) == 3


def test_client_errors_are_not_retried(server: Server, alice_key: str):
    with (
        flaky_proxy(server.url) as proxy,
        Client(proxy.url, alice_key, backoff=0.01) as client,
        pytest.raises(InvalidRequest),
    ):
        client.jobs.create("no-such-dataset", epsilon=-1)
    assert len(proxy.seen) == 1


def test_retries_give_up_with_the_last_error(server: Server, alice_key: str):
    with flaky_proxy(server.url) as proxy:
        proxy.faults = [503] * 5
        with (
            Client(proxy.url, alice_key, max_retries=2, backoff=0.01) as client,
            pytest.raises(ServiceUnavailable) as unavailable,
        ):
            client.datasets.get("anything")
        assert (unavailable.value.status, unavailable.value.detail) == (503, "proxy fault")
        assert len(proxy.seen) == 3

        proxy.faults = [DROP] * 5
        with (
            Client(proxy.url, alice_key, max_retries=1, backoff=0.01) as client,
            pytest.raises(PrivevoConnectionError),
        ):
            client.datasets.get("anything")
        assert len(proxy.seen) == 5


def test_uploads_are_retried_only_when_the_server_cannot_have_stored_them(
    server: Server, alice_key: str, tmp_path: Path
):
    data = write_digits_npz(tmp_path / "d.npz", 1, offset=95)
    with flaky_proxy(server.url) as proxy, Client(proxy.url, alice_key, backoff=0.01) as client:
        proxy.faults = [503, 502]  # 503: refused, retry; 502: may have been stored, stop
        with pytest.raises(PrivevoAPIError) as bad_gateway:
            client.datasets.upload(data, epsilon_cap=1.0)
    assert bad_gateway.value.status == 502
    assert [s.path for s in proxy.seen] == ["/v1/datasets"] * 2


def test_a_full_quota_is_raised_naming_it(server: Server, tmp_path: Path):
    engine = db.make_engine(f"sqlite:///{server.home / 'privevo.sqlite3'}")
    with closing(db.make_session_factory(engine)()) as session:
        tenant = db.tenant_named(session, "quota-sdk")
        _, key = db.create_api_key(session, tenant.id)
        db.set_tenant_quotas(session, tenant.id, max_queued_jobs=0, max_stored_bytes=None)
    engine.dispose()
    # No retries here: the quota's Retry-After is a minute (jobs must start to free it).
    with Client(server.url, key, max_retries=0) as client:
        data = write_digits_npz(tmp_path / "q.npz", 1, offset=150)
        dataset = client.datasets.upload(data, epsilon_cap=1.0)
        with pytest.raises(QuotaExceeded, match="max_queued_jobs = 0") as full:
            client.jobs.create(dataset, epsilon=0.1)
    assert full.value.status == 429
