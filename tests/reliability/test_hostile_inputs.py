"""Hostile inputs get a 4xx with a message, never a 5xx, on SQLite and PostgreSQL.

The campaign's cases: numbers JSON does not have (NaN, +-Infinity, 1e309) in epsilon and
delta, whose 422 once echoed an input that cannot be serialised; a NUL character, which
PostgreSQL refuses, in a path id, a body id, a cursor, a dataset name or a column name; a
cursor holding a naive datetime; an events cursor and a Last-Event-ID past 64-bit integers.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.reliability.conftest import client_for
from tests.servers import Server
from tests.service.test_api import npz_bytes, upload


@pytest.fixture(scope="module")
def mallory(gateway: Server) -> Iterator[httpx.Client]:
    with client_for(gateway, "mallory") as client:
        yield client


@pytest.fixture(scope="module")
def mallory_job(mallory: httpx.Client) -> dict:
    dataset = upload(mallory, npz_bytes(2, offset=40))
    assert dataset.status_code == 201, dataset.text
    body = {"dataset_id": dataset.json()["id"], "epsilon": 0.1, "iterations": 1}
    job = mallory.post("/v1/jobs", json=body)
    assert job.status_code == 202, job.text
    assert mallory.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 202
    return job.json()


def cursor_of(*values: object) -> str:
    raw = json.dumps(list(values)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


NOT_JSON_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"]


def _job_body(field: str, number: str, dataset_id: str) -> bytes:
    """A job body with a number that standard JSON does not have (Python's json writes them)."""
    other = {"epsilon": "0.1", "delta": "1e-7"}
    other[field] = number
    text = f'{{"dataset_id": "{dataset_id}", "epsilon": {other["epsilon"]}, '
    return (text + f'"delta": {other["delta"]}, "iterations": 1}}').encode()


def hostile_requests(job: dict) -> list[tuple[str, str, dict]]:
    """(case, method, httpx request options) for every hostile input of the campaign."""
    cases: list[tuple[str, str, dict]] = []
    for field in ("epsilon", "delta"):
        for number in NOT_JSON_NUMBERS:
            content = _job_body(field, number, job["dataset_id"])
            headers = {"Content-Type": "application/json"}
            cases.append((f"{field}={number}", "POST", {"url": "/v1/jobs", "content": content,
                                                        "headers": headers}))  # fmt: skip
    cases += [
        ("NUL in a job path id", "GET", {"url": "/v1/jobs/job_%00abc"}),
        ("NUL in a dataset path id", "GET", {"url": "/v1/datasets/ds_%00"}),
        ("NUL in a body dataset id", "POST",
         {"url": "/v1/jobs", "json": {"dataset_id": "ds_\x00", "epsilon": 0.1}}),
        ("NUL in an eval dataset id", "POST",
         {"url": "/v1/jobs", "json": {"dataset_id": job["dataset_id"], "epsilon": 0.1,
                                      "eval_dataset_id": "ds_\x00"}}),
        ("NUL in a cursor", "GET", {"url": "/v1/jobs", "params": {"cursor": "\x00"}}),
        ("NUL in a cursor's id", "GET",
         {"url": "/v1/jobs", "params": {"cursor": cursor_of("2024-01-01T00:00:00+00:00",
                                                            "job_\x00")}}),
        ("NUL in a dataset cursor's id", "GET",
         {"url": "/v1/datasets", "params": {"cursor": cursor_of("2024-01-01T00:00:00+00:00",
                                                                "ds_\x00")}}),
        ("naive datetime in a cursor", "GET",
         {"url": "/v1/jobs", "params": {"cursor": cursor_of("2024-01-01T00:00:00", "job_a")}}),
        ("a cursor of another shape", "GET",
         {"url": "/v1/datasets", "params": {"cursor": cursor_of(1, 2, 3)}}),
        ("events cursor 2^63", "GET",
         {"url": f"/v1/jobs/{job['id']}/events", "params": {"cursor": str(2**63)}}),
        ("events cursor 2^64", "GET",
         {"url": f"/v1/jobs/{job['id']}/events", "params": {"cursor": str(2**64)}}),
        ("Last-Event-ID 2^64", "GET",
         {"url": f"/v1/jobs/{job['id']}/events",
          "headers": {"Accept": "text/event-stream", "Last-Event-ID": str(2**64)}}),
        ("Last-Event-ID 2^63", "GET",
         {"url": f"/v1/jobs/{job['id']}/events",
          "headers": {"Accept": "text/event-stream", "Last-Event-ID": str(2**63)}}),
    ]  # fmt: skip
    for field in ("name", "text_column", "label_column", "user_column"):
        fields = {"name": "digits", "modality": "image", "epsilon_cap": "1.0"}
        fields[field] = "bad\x00name"
        cases.append((f"NUL in the upload's {field}", "POST",
                      {"url": "/v1/datasets", "data": fields,
                       "files": {"file": ("digits.npz", npz_bytes(1, offset=50))}}))  # fmt: skip
    return cases


def test_hostile_inputs_are_4xx_with_a_message(
    gateway: Server, mallory: httpx.Client, mallory_job: dict, figures: list[str]
) -> None:
    statuses: Counter[int] = Counter()
    wrong = []
    cases = hostile_requests(mallory_job)
    for case, method, options in cases:
        try:
            response = mallory.request(method, **options)
        except httpx.TransportError as exc:  # a connection cut is as wrong as a 5xx
            statuses[0] += 1
            wrong.append((case, type(exc).__name__, str(exc)))
            continue
        statuses[response.status_code] += 1
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = None
        if not 400 <= response.status_code < 500 or not detail:
            wrong.append((case, response.status_code, response.text[:200]))
    database = gateway.env.get("PRIVEVO_DATABASE_URL", "sqlite").split(":")[0]
    figures.append(f"hostile inputs ({database}): {len(cases)} cases, statuses {dict(statuses)}")
    assert wrong == [], "\n".join(map(str, wrong))
    assert mallory.get("/v1/jobs").status_code == 200  # the server is still well


def test_a_non_finite_number_is_refused_saying_what_json_allows(
    mallory: httpx.Client, mallory_job: dict
) -> None:
    response = mallory.post(
        "/v1/jobs",
        content=_job_body("epsilon", "NaN", mallory_job["dataset_id"]),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "NaN" in response.text and "finite" in response.text


@pytest.mark.parametrize("cursor", [2**31 - 1, 2**31, 2**63 - 1])
def test_an_events_cursor_past_every_event_is_an_empty_page(
    mallory: httpx.Client, mallory_job: dict, cursor: int
) -> None:
    # Found by schemathesis on PostgreSQL: event numbers are 32-bit there, and a larger
    # cursor (a valid 64-bit one) was a 500.
    page = mallory.get(f"/v1/jobs/{mallory_job['id']}/events", params={"cursor": cursor})
    assert page.status_code == 200, page.text
    assert page.json() == {"items": [], "next_cursor": None}
