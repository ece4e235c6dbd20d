"""Tenants learn nothing of each other through the gateway's edges: /metrics is the
operator's alone and its labels stay bounded, event ids number a job's own events, and every
route answers another tenant's ids exactly as unknown ones (cross-tenant probes)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.reliability.conftest import OwnRedis, client_for, scale, start_server
from tests.servers import Server
from tests.service.test_api import npz_bytes, upload

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
TOKEN = secrets.token_urlsafe(32)
ID = re.compile(r"\b(?:ds|job|bud|key|ten)_[0-9a-f]{32}\b")


@pytest.fixture(scope="module")
def operated(tmp_path_factory: pytest.TempPathFactory, own_redis: OwnRedis) -> Iterator[Server]:
    """A gateway (SQLite) whose operator set a metrics token."""
    server = start_server(
        tmp_path_factory.mktemp("operated"), own_redis, PRIVEVO_METRICS_TOKEN=TOKEN
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tenants(operated: Server) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with client_for(operated, "alice") as alice, client_for(operated, "bob") as bob:
        yield alice, bob


@pytest.fixture(scope="module")
def alice_ids(tenants: tuple[httpx.Client, httpx.Client]) -> dict[str, str]:
    """Alice's dataset, and a job on it that made several events (canceled: they end)."""
    alice, _ = tenants
    dataset = upload(alice, npz_bytes(2, offset=60))
    assert dataset.status_code == 201, dataset.text
    ids = {"dataset_id": dataset.json()["id"]}
    for _ in range(3):
        job = alice.post("/v1/jobs", json={"dataset_id": ids["dataset_id"], "epsilon": 0.05})
        assert job.status_code == 202, job.text
        assert alice.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 202
    ids["job_id"] = job.json()["id"]
    return ids


def series(text: str, metric: str, label: str) -> set[str]:
    """The values one label takes across a metric's series."""
    pattern = re.compile(rf'^{metric}\{{[^}}]*{label}="([^"]*)"', re.MULTILINE)
    return set(pattern.findall(text))


def test_metrics_are_the_operators_and_their_labels_stay_bounded(
    operated: Server, tenants: tuple[httpx.Client, httpx.Client], figures: list[str]
) -> None:
    alice, _ = tenants
    assert httpx.get(f"{operated.url}/metrics").status_code == 401
    assert alice.get("/metrics").status_code == 401  # a tenant's key is not the operator's
    wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
    assert httpx.get(f"{operated.url}/metrics", headers=wrong).status_code == 401
    methods = scale(200, 1000)
    for _ in range(methods):
        alice.request(f"X{secrets.token_hex(4).upper()}", "/v1/jobs")
    for _ in range(scale(50, 200)):
        alice.get(f"/v1/jobs/job_{secrets.token_hex(16)}")
    operator = {"Authorization": f"Bearer {TOKEN}"}
    text = httpx.get(f"{operated.url}/metrics", headers=operator).text
    method_values = series(text, "privevo_http_requests_total", "method")
    routes = series(text, "privevo_http_requests_total", "route")
    assert method_values <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in method_values
    assert "/v1/jobs/{job_id}" in routes and not any(ID.search(route) for route in routes)
    assert 'privevo_jobs{status="queued"}' in text
    series_count = sum(1 for line in text.splitlines() if line.startswith("privevo_http_req"))
    figures.append(
        f"/metrics after {methods} random methods and {scale(50, 200)} random ids: "
        f"{len(method_values)} method values, {len(routes)} routes, {series_count} series lines"
    )


def test_event_ids_number_a_jobs_own_events(
    tenants: tuple[httpx.Client, httpx.Client], alice_ids: dict[str, str]
) -> None:
    alice, bob = tenants
    # Alice's jobs made events before bob's first: his ids tell him nothing of them.
    dataset = upload(bob, npz_bytes(2, offset=70))
    assert dataset.status_code == 201, dataset.text
    job = bob.post("/v1/jobs", json={"dataset_id": dataset.json()["id"], "epsilon": 0.05}).json()
    assert bob.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    events = bob.get(f"/v1/jobs/{job['id']}/events").json()["items"]
    assert [event["id"] for event in events] == list(range(1, len(events) + 1))
    with bob.stream(
        "GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"}
    ) as response:
        text = "".join(response.iter_text())
    assert re.findall(r"^id: (\d+)$", text, re.MULTILINE)[0] == "1"
    # Resumption still works: after event 1, from event 2 on.
    with bob.stream(
        "GET",
        f"/v1/jobs/{job['id']}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "1"},
    ) as response:
        rest = "".join(response.iter_text())
    assert re.findall(r"^id: (\d+)$", rest, re.MULTILINE)[0] == "2"
    alices = alice.get(f"/v1/jobs/{alice_ids['job_id']}/events").json()["items"]
    assert alices[0]["id"] == 1


def _routes() -> list[tuple[str, str]]:
    spec = yaml.safe_load(OPENAPI.read_text())
    return [
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if path.startswith("/v1/")
    ]


def test_every_route_answers_another_tenants_ids_as_unknown_ones(
    tenants: tuple[httpx.Client, httpx.Client],
    alice_ids: dict[str, str],
    operated: Server,
    figures: list[str],
) -> None:
    alice, bob = tenants
    mine = set(ID.findall(str(alice_ids)))
    probes, wrong = 0, []
    with operated.client(None) as anonymous:
        for method, path in _routes():
            url = path.format(**alice_ids)
            body = {"dataset_id": alice_ids["dataset_id"], "epsilon": 0.05}
            options = {"json": body} if method == "POST" and path == "/v1/jobs" else {}
            if path == "/v1/datasets" and method == "POST":
                continue  # an upload names no other tenant's id (its budget: test_api)
            for client, expected in ((bob, {404} if "{" in path else {200}), (anonymous, {401})):
                response = client.request(method, url, **options)
                probes += 1
                # A 404 may name the id it was asked for; it must name no other.
                leaked = mine & set(ID.findall(response.text)) - set(ID.findall(url + str(options)))
                if "{" not in path and method == "POST" and client is bob:
                    expected = {404}  # a job on alice's dataset
                if response.status_code not in expected or leaked:
                    wrong.append((method, url, response.status_code, sorted(leaked)))
    # Bob's own listings hold nothing of alice's.
    for path in ("/v1/datasets", "/v1/jobs"):
        assert not mine & set(ID.findall(bob.get(path).text))
    figures.append(f"cross-tenant probes: {probes} requests on {len(_routes())} routes")
    assert wrong == []
    assert alice.get(f"/v1/jobs/{alice_ids['job_id']}").status_code == 200
