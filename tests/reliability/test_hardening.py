"""Hardening of the gateway's edges: capped request heads and bodies, a complete Allow, API
keys that expire and are revoked at once, and per-tenant quotas answered 429 with
Retry-After. One gateway (SQLite) with small limits, so that each is reached quickly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from service import db
from tests.reliability.conftest import OwnRedis, key_for, start_server
from tests.servers import Server
from tests.service.test_api import npz_bytes, stored_uploads, upload
from tests.service.test_console import signed_in

HEADER_BYTES = 8192
QUEUED_JOBS = 2
STORED_BYTES = 20_000  # two of the 8.4 kB uploads below, not three


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, own_redis: OwnRedis) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("hardened"),
        own_redis,
        PRIVEVO_MAX_HEADER_BYTES=str(HEADER_BYTES),
        PRIVEVO_MAX_QUEUED_JOBS=str(QUEUED_JOBS),
        PRIVEVO_MAX_STORED_BYTES=str(STORED_BYTES),
    )
    yield server
    server.stop()


def sessions_of(server: Server) -> db.Session:
    engine = db.make_engine(f"sqlite:///{server.home / 'privevo.sqlite3'}")
    return db.make_session_factory(engine)()


def test_a_large_json_body_is_413_before_it_is_parsed(strict: Server, figures: list[str]) -> None:
    with strict.client(key_for(strict, "hugo")) as hugo:
        body = b'{"dataset_id": "' + b"x" * (50 * 1024**2) + b'", "epsilon": 1}'
        started = time.monotonic()
        declared = hugo.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        declared_s = time.monotonic() - started

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it streams
            yield b'{"dataset_id": "'
            for _ in range(64):
                yield b"x" * 65536
            yield b'"}'

        streamed = hugo.post(
            "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert hugo.get("/v1/jobs").status_code == 200
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert "1048576 bytes" in answer.json()["detail"]
    figures.append(f"50 MB JSON body: 413 in {declared_s:.2f} s (it was parsed: 1.5-2 s)")


def test_a_request_head_past_the_limit_is_refused(strict: Server) -> None:
    with strict.client(key_for(strict, "hank")) as hank:
        assert hank.get("/v1/jobs", headers={"X-Pad": "x" * (HEADER_BYTES // 2)}).status_code == 200
        try:
            answer = hank.get("/v1/jobs", headers={"X-Pad": "x" * (HEADER_BYTES + 1024)})
        except httpx.RemoteProtocolError:
            pytest.fail("the server cut the connection instead of answering")
        assert 400 <= answer.status_code < 500
        assert answer.text
        assert hank.get("/v1/jobs").status_code == 200


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/v1/datasets", {"GET", "HEAD", "POST"}),
        ("/v1/datasets/ds_x", {"GET", "HEAD", "DELETE"}),
        ("/v1/jobs", {"GET", "HEAD", "POST"}),
        ("/v1/jobs/job_x/cancel", {"POST"}),
    ],
)
def test_a_method_not_allowed_names_every_allowed_one(
    strict: Server, path: str, methods: set[str]
) -> None:
    for method in ("OPTIONS", "PUT", "PATCH"):
        answer = httpx.request(method, f"{strict.url}{path}")
        assert answer.status_code == 405
        assert set(answer.headers["allow"].replace(" ", "").split(",")) == methods


def test_keys_expire_are_listed_and_are_revoked_at_once(strict: Server) -> None:
    key = strict.cli("keys", "create", "--tenant", "kim", "--expires-in", "30d")
    with strict.client(key) as kim:
        assert kim.get("/v1/jobs").status_code == 200
        listing = strict.cli("keys", "list", "--tenant", "kim")
        (row,) = [line for line in listing.splitlines() if line.startswith(key[:12])]
        expires = datetime.now(UTC) + timedelta(days=30)
        assert expires.strftime("%Y-%m-%d") in row and key not in listing
        assert strict.cli("keys", "revoke", key[:12]) == f"revoked {key[:12]}"
        refused = kim.get("/v1/jobs")
        assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
    assert row.split()[-1] == "-"  # not revoked when first listed
    relisted = strict.cli("keys", "list", "--tenant", "kim")
    (revoked_row,) = [line for line in relisted.splitlines() if line.startswith(key[:12])]
    revoked = datetime.strptime(" ".join(revoked_row.split()[-2:]), "%Y-%m-%d %H:%M:%SZ")
    assert abs(revoked.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=5)
    with closing(sessions_of(strict)) as session:
        tenant = db.tenant_named(session, "kim")
        _, expired = db.create_api_key(
            session, tenant.id, expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
    with strict.client(expired) as late:
        assert late.get("/v1/jobs").status_code == 401


def test_a_revoked_key_ends_its_console_session_at_once(strict: Server) -> None:
    client, _ = signed_in(strict, "carl")
    with closing(client):
        assert client.get("/console/datasets").status_code == 200
        prefix = strict.cli("keys", "list", "--tenant", "carl").splitlines()[1].split()[0]
        strict.cli("keys", "revoke", prefix)
        answer = client.get("/console/datasets")
        assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"


def test_bad_key_commands_are_one_line_errors(strict: Server) -> None:
    for args in (["revoke", "pev_nothing1"], ["list", "--tenant", "nobody"],
                 ["create", "--tenant", "x", "--expires-in", "soon"]):  # fmt: skip
        with pytest.raises(Exception) as refused:
            strict.cli("keys", *args)
        assert "error:" in refused.value.stderr and "Traceback" not in refused.value.stderr


def test_queued_jobs_past_the_quota_are_429_with_retry_after(strict: Server) -> None:
    with strict.client(key_for(strict, "quinn")) as quinn:
        dataset = upload(quinn, npz_bytes(1, offset=90))
        assert dataset.status_code == 201, dataset.text
        body = {"dataset_id": dataset.json()["id"], "epsilon": 0.01, "iterations": 1}
        jobs = [quinn.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"q{i}"})
                for i in range(QUEUED_JOBS + 1)]  # fmt: skip
        assert [job.status_code for job in jobs] == [202] * QUEUED_JOBS + [429]
        refused = jobs[-1]
        assert int(refused.headers["Retry-After"]) > 0
        assert "max_queued_jobs = 2" in refused.json()["detail"]
        # A retry of a created job still gets it; one started job frees a place.
        again = quinn.post("/v1/jobs", json=body, headers={"Idempotency-Key": "q0"})
        assert again.status_code == 202 and again.json()["id"] == jobs[0].json()["id"]
        assert quinn.post(f"/v1/jobs/{jobs[0].json()['id']}/cancel").status_code == 202
        assert quinn.post("/v1/jobs", json=body).status_code == 202
        # The operator's quota for one tenant takes the installation's place.
        with closing(sessions_of(strict)) as session:
            tenant = db.tenant_named(session, "quinn")
            db.set_tenant_quotas(session, tenant.id, max_queued_jobs=3, max_stored_bytes=None)
        assert quinn.post("/v1/jobs", json=body).status_code == 202
        assert quinn.post("/v1/jobs", json=body).status_code == 429


def test_stored_bytes_past_the_quota_are_429_and_store_nothing(strict: Server) -> None:
    with strict.client(key_for(strict, "sara")) as sara:
        sizes = []
        for offset in (100, 110):
            created = upload(sara, npz_bytes(1, offset=offset))
            assert created.status_code == 201, created.text
            sizes.append(created.json()["id"])
        files = len(stored_uploads(strict))
        third = upload(sara, npz_bytes(1, offset=120))
        assert third.status_code == 429, third.text
        assert "max_stored_bytes = 20000" in third.json()["detail"]
        assert int(third.headers["Retry-After"]) > 0
        # A body that alone passes the quota is refused before it is stored.
        big = upload(sara, b"\0" * (2 * 1024**2), filename="big.npz")
        assert big.status_code == 429, big.text
        assert len(stored_uploads(strict)) == files
        # Deleting data frees its bytes.
        assert sara.delete(f"/v1/datasets/{sizes[0]}").status_code == 204
        assert upload(sara, npz_bytes(1, offset=120)).status_code == 201
