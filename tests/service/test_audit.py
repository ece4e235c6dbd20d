"""Audit jobs end to end: the gateway (``privevo serve``) on SQLite and on PostgreSQL, a real
``celery worker`` process and Redis; no eager mode.

An audit job is refused before anything is reserved when it cannot run; one that ran is charged
like any job, and its report goes to its owner only (and into its result zip).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.servers import Server, gateway_with_worker
from tests.service.test_evaluation import npz, upload, wait_for_end

# A broker database of its own: other modules' gateways send to databases 11 to 14.
BROKER_URL = "redis://127.0.0.1:6379/10"
FAST = {"iterations": 2, "num_samples": 40, "embedding_config": {"size": 14}}
AUDIT = {"canaries": 40, "guesses": 10}


@pytest.fixture(scope="module")
def gateway(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``privevo serve`` and one worker, sharing a home, a database and a broker."""
    with gateway_with_worker(tmp_path_factory.mktemp("service"), db_url, BROKER_URL) as server:
        yield server


@pytest.fixture(scope="module")
def erin(gateway: Server) -> Iterator[httpx.Client]:
    with gateway.client(gateway.cli("keys", "create", "--tenant", "erin")) as client:
        yield client


@pytest.fixture(scope="module")
def frank(gateway: Server) -> Iterator[httpx.Client]:
    with gateway.client(gateway.cli("keys", "create", "--tenant", "frank")) as client:
        yield client


def test_an_audit_job_reports_its_bound_to_its_owner_and_pays_its_reservation(
    gateway: Server, erin: httpx.Client, frank: httpx.Client
) -> None:
    data = upload(erin, npz(6, offset=0), epsilon_cap="2.0")
    assert data.status_code == 201, data.text
    dataset_id = data.json()["id"]
    body = {"dataset_id": dataset_id, "epsilon": 1.0, "insecure_test_noise": True, "seed": 5}
    created = erin.post("/v1/jobs", json={**body, **FAST, "audit": AUDIT})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.json()["spec"]["audit"] == {**AUDIT, "seed": None}
    early = erin.get(f"/v1/jobs/{job_id}/audit")
    assert early.status_code == 409  # a worker needs seconds to even start it
    assert "its audit report exists once it has succeeded" in early.json()["detail"]
    job = wait_for_end(erin, job_id, gateway.home / "worker.log")
    assert (job["status"], job["error"]) == ("succeeded", None)

    response = erin.get(f"/v1/jobs/{job_id}/audit")
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["job_id"], report["dataset_id"], report["seed"]) == (job_id, dataset_id, 5)
    assert (report["m"], report["r"], report["confidence"]) == (40, 10, 0.95)
    assert math.isfinite(report["epsilon_lower_bound"]) and report["epsilon_lower_bound"] >= 0
    assert report["claimed_epsilon"] == pytest.approx(job["epsilon_spent"])
    assert report["claimed_epsilon"] <= 1.0
    assert isinstance(report["canaries"]["seed"], int)
    assert "spends that dataset's budget" in report["budget"]
    # The events say it is an audit, from its start to its bound.
    events = erin.get(f"/v1/jobs/{job_id}/events").json()["items"]
    (started,) = [e["payload"] for e in events if e["kind"] == "started"]
    assert started["audit"] == {**AUDIT, "seed": report["canaries"]["seed"]}
    (bound,) = [e["payload"] for e in events if e["kind"] == "audit"]
    assert bound["epsilon_lower_bound"] == report["epsilon_lower_bound"]
    # The report is in the result beside the usual files.
    result = erin.get(f"/v1/jobs/{job_id}/result")
    with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
        names = archive.namelist()
        assert "privacy_report.json" in names
        assert response.json() == json.loads(archive.read("audit.json"))
    # Charged like any job that released: its whole reservation, on its dataset's budget.
    budget = erin.get(f"/v1/datasets/{dataset_id}/budget").json()
    assert (budget["epsilon_spent"], budget["epsilon_reserved"]) == (1.0, 0.0)
    # Another tenant: 404, as for any of erin's resources.
    assert frank.get(f"/v1/jobs/{job_id}/audit").status_code == 404
    assert frank.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_job_that_is_not_an_audit_has_no_audit(erin: httpx.Client) -> None:
    data = upload(erin, npz(6, offset=10), epsilon_cap="1.0").json()
    created = erin.post("/v1/jobs", json={"dataset_id": data["id"], "epsilon": 0.5, **FAST})
    assert created.status_code == 202, created.text
    assert created.json()["spec"]["audit"] is None
    response = erin.get(f"/v1/jobs/{created.json()['id']}/audit")
    assert response.status_code == 404
    assert "is not an audit" in response.json()["detail"]
    erin.post(f"/v1/jobs/{created.json()['id']}/cancel")


TEXTS = b"".join(b'{"text": "a short review", "label": "%s"}\n' % s for s in (b"a", b"b") * 3)


@pytest.mark.parametrize(
    ("upload_as", "body", "message"),
    [
        (
            ("reviews.jsonl", TEXTS, {"modality": "text"}),
            {"api": "grammar", "embedding": "minilm", "audit": AUDIT},
            "audit: the audit has no canaries for the 'grammar' API; it audits drawtext jobs",
        ),
        (
            ("digits.npz", 20, {"user_column": "patient"}),
            {"audit": AUDIT, "votes_per_user": 2},
            "audit: the canaries are single records, so an audit tests a record-level run",
        ),
        (
            ("digits.npz", 30, {}),
            {"audit": {"canaries": 10, "guesses": 20}},
            "audit: guesses: need 1 to 10 (the canaries), got 20",
        ),
    ],
    ids=["text-api", "user-level", "more-guesses-than-canaries"],
)
def test_an_audit_that_cannot_run_is_422_before_anything_is_reserved(
    frank: httpx.Client, upload_as: tuple, body: dict, message: str
) -> None:
    filename, content, fields = upload_as
    if isinstance(content, int):  # digits at that offset
        digits = np.load(io.BytesIO(npz(2, offset=content)))
        arrays = {"images": digits["images"], "labels": digits["labels"]}
        if "user_column" in fields:
            arrays["patient"] = np.array([f"p{i % 5}" for i in range(len(digits["labels"]))])
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        content = buffer.getvalue()
    created = frank.post(
        "/v1/datasets",
        files={"file": (filename, content)},
        data={"name": filename, "modality": "image", "epsilon_cap": "1.0", **fields},
    )
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    response = frank.post("/v1/jobs", json={"dataset_id": dataset_id, "epsilon": 0.5, **body})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    budget = frank.get(f"/v1/datasets/{dataset_id}/budget").json()
    assert (budget["epsilon_reserved"], budget["active_jobs"]) == (0.0, 0)
    assert frank.get("/v1/jobs").json()["items"] == []
