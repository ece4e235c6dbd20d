"""Held-out data and evaluated jobs end to end: the gateway (``privevo serve``) on SQLite and on
PostgreSQL, a real ``celery worker`` process and Redis; no eager mode.

Held-out data has no budget and is never a job's input; a job naming it is refused before
anything is reserved when it cannot evaluate the job; the NOT DP scores go to the job's owner
only, never into the result zip.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import digits_28
from tests.servers import Server, gateway_with_worker, wait_for_end

pytestmark = pytest.mark.slow

# A broker database of its own: other modules' gateways send to databases 12 and 13.
BROKER_URL = "redis://127.0.0.1:6379/11"
ITERATIONS = 2
FAST = {"iterations": ITERATIONS, "num_samples": 40, "embedding_config": {"size": 14}}


@pytest.fixture(scope="module")
def gateway(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``privevo serve`` and one worker, sharing a home, a database and a broker."""
    with gateway_with_worker(tmp_path_factory.mktemp("service"), db_url, BROKER_URL) as server:
        yield server


@pytest.fixture(scope="module")
def carol(gateway: Server) -> Iterator[httpx.Client]:
    with gateway.client(gateway.cli("keys", "create", "--tenant", "carol")) as client:
        yield client


@pytest.fixture(scope="module")
def dan(gateway: Server) -> Iterator[httpx.Client]:
    with gateway.client(gateway.cli("keys", "create", "--tenant", "dan")) as client:
        yield client


def npz(n_per_label: int, *, offset: int, labels: range = range(10)) -> bytes:
    """Digits as an npz upload; uploads of other offsets hold other records."""
    digits = digits_28(n_per_label, offset=offset)
    keep = np.isin(digits.labels, list(labels))
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images[keep], labels=digits.labels[keep])
    return buffer.getvalue()


def upload(client: httpx.Client, content: bytes, **fields: str) -> httpx.Response:
    data = {"name": "digits", "modality": "image", **fields}
    return client.post("/v1/datasets", files={"file": ("digits.npz", content)}, data=data)


def private(client: httpx.Client, offset: int) -> dict:
    response = upload(client, npz(6, offset=offset), epsilon_cap="1.0")
    assert response.status_code == 201, response.text
    return response.json()


def heldout(client: httpx.Client, content: bytes) -> dict:
    response = upload(client, content, role="heldout")
    assert response.status_code == 201, response.text
    return response.json()


def test_held_out_data_has_no_budget_and_takes_no_caps(gateway: Server, carol: httpx.Client):
    held = heldout(carol, npz(4, offset=60))
    assert (held["role"], held["budget"], held["privacy_unit"]) == ("heldout", None, "record")
    assert carol.get(f"/v1/datasets/{held['id']}").json()["budget"] is None
    listed = {d["id"]: d for d in carol.get("/v1/datasets").json()["items"]}
    assert listed[held["id"]]["role"] == "heldout"
    budget = carol.get(f"/v1/datasets/{held['id']}/budget")
    assert budget.status_code == 404
    assert "held-out evaluation data: it has no privacy budget" in budget.json()["detail"]
    for fields, named in [
        ({"role": "heldout", "epsilon_cap": "1.0"}, "epsilon_cap"),
        ({"role": "heldout", "delta_cap": "1e-6"}, "delta_cap"),
        ({"role": "heldout", "user_column": "patient"}, "user_column"),
        ({}, "epsilon_cap"),  # private data needs its cap
        ({"role": "public", "epsilon_cap": "1.0"}, "role"),
    ]:
        response = upload(carol, npz(4, offset=70), **fields)
        assert response.status_code == 422, (fields, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", named], fields
    assert len(carol.get("/v1/datasets").json()["items"]) == len(listed)


def test_an_evaluation_that_cannot_be_made_is_422_before_anything_is_reserved(
    carol: httpx.Client, dan: httpx.Client
):
    data = private(carol, offset=0)
    disjoint = heldout(carol, npz(4, offset=80))
    overlapping = heldout(carol, npz(6, offset=0))  # the same bytes
    sharing = heldout(carol, npz(3, offset=4))  # 2 of each label are the private data's
    other_labels = heldout(carol, npz(4, offset=80, labels=range(3)))
    assert other_labels["labels"] == ["0", "1", "2"]
    tiny = heldout(carol, _few(3))
    strangers = heldout(dan, npz(4, offset=80))
    unknown = "ds_" + "0" * 32
    body = {"dataset_id": data["id"], "epsilon": 0.5, **FAST}
    cases = {
        unknown: f"eval_dataset_id: dataset {unknown} not found",
        strangers["id"]: f"eval_dataset_id: dataset {strangers['id']} not found",
        data["id"]: "is private data, which is never scored in the clear",
        overlapping["id"]: "60 record(s) of dataset",
        sharing["id"]: "20 record(s) of dataset",
        tiny["id"]: "an evaluation needs at least 4",
    }
    for eval_id, message in cases.items():
        response = carol.post("/v1/jobs", json={**body, "eval_dataset_id": eval_id})
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"], eval_id
    # Labels: the job's set, declared or the data's; the held-out labels must be among them.
    declared = {**body, "labels": ["0", "1"], "eval_dataset_id": disjoint["id"]}
    response = carol.post("/v1/jobs", json=declared)
    assert response.status_code == 422
    assert "labels ['2', '3', '4', '5', '6', '7', '8', '9'] outside" in response.json()["detail"]
    # Held-out data is never a job's input.
    response = carol.post("/v1/jobs", json={**body, "dataset_id": disjoint["id"]})
    assert response.status_code == 422
    assert "held-out evaluation data: it is never a job's private input" in response.text
    budget = carol.get(f"/v1/datasets/{data['id']}/budget").json()
    assert (budget["epsilon_reserved"], budget["active_jobs"]) == (0.0, 0)
    assert carol.get("/v1/jobs").json()["items"] == []
    # Another tenant's id reads exactly like one that does not exist.
    replies = [
        carol.post("/v1/jobs", json={**body, "eval_dataset_id": eval_id}).json()["detail"]
        for eval_id in (unknown, strangers["id"])
    ]
    assert replies[0].replace(unknown, "ID") == replies[1].replace(strangers["id"], "ID")
    # A subset of the job's labels is fine.
    response = carol.post("/v1/jobs", json={**body, "eval_dataset_id": other_labels["id"]})
    assert response.status_code == 202, response.text
    carol.post(f"/v1/jobs/{response.json()['id']}/cancel")


def _few(count: int) -> bytes:
    digits = digits_28(1, offset=90)
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images[:count], labels=digits.labels[:count])
    return buffer.getvalue()


def test_an_evaluated_job_gives_its_owner_the_not_dp_scores_and_no_one_else(
    gateway: Server, carol: httpx.Client, dan: httpx.Client
):
    data = private(carol, offset=10)
    held = heldout(carol, npz(4, offset=40))
    body = {"dataset_id": data["id"], "epsilon": 1.0, "eval_dataset_id": held["id"], **FAST}
    created = carol.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.json()["eval_dataset_id"] == held["id"]
    early = carol.get(f"/v1/jobs/{job_id}/evaluation")
    assert early.status_code == 409  # a worker needs seconds to even start it
    assert "its evaluation exists once it has succeeded" in early.json()["detail"]
    job = wait_for_end(carol, job_id, gateway.home / "worker.log")
    assert (job["status"], job["error"]) == ("succeeded", None)

    response = carol.get(f"/v1/jobs/{job_id}/evaluation")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    evaluation = response.json()
    assert (evaluation["dp"], evaluation["job_id"]) == (False, job_id)
    assert evaluation["eval_dataset_id"] == held["id"]
    rows = evaluation["per_iteration"]
    assert [row["iteration"] for row in rows] == list(range(ITERATIONS + 1))
    assert all(0 <= row["accuracy"] <= 1 and row["fid"] >= 0 for row in rows)
    assert evaluation["memorisation"]["baseline"] == 60 / (60 + 40)
    assert 0 <= evaluation["memorisation"]["closer_to_private"] <= 1

    report = carol.get(f"/v1/jobs/{job_id}/evaluation/report")
    assert report.status_code == 200, report.text
    assert report.headers["content-type"].startswith("text/html")
    assert report.headers["content-disposition"].startswith("attachment;")
    assert report.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert "NOT DP" in report.text

    # Another tenant: 404, as for any of carol's resources.
    for path in (f"/v1/jobs/{job_id}/evaluation", f"/v1/jobs/{job_id}/evaluation/report"):
        assert dan.get(path).status_code == 404, path
    # The shareable result holds none of it.
    result = carol.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
        names = archive.namelist()
    assert "report.html" in names
    assert not [name for name in names if "eval" in name or "not-dp" in name or "memoris" in name]
    # The held-out data spent nothing: only the job's own budget paid.
    assert carol.get(f"/v1/datasets/{data['id']}/budget").json()["epsilon_spent"] == 1.0
    assert carol.get(f"/v1/datasets/{held['id']}").json()["budget"] is None

    # Deleting the held-out data deletes the evaluations it made.
    assert carol.delete(f"/v1/datasets/{held['id']}").status_code == 204
    gone = carol.get(f"/v1/jobs/{job_id}/evaluation")
    assert gone.status_code == 404
    assert f"was deleted with dataset {held['id']}" in gone.json()["detail"]
    assert not list((gateway.home / "storage").rglob("report-not-dp.html"))


def test_a_job_without_held_out_data_has_no_evaluation(carol: httpx.Client):
    data = private(carol, offset=20)
    created = carol.post("/v1/jobs", json={"dataset_id": data["id"], "epsilon": 0.5, **FAST})
    assert created.status_code == 202, created.text
    assert created.json()["eval_dataset_id"] is None
    response = carol.get(f"/v1/jobs/{created.json()['id']}/evaluation")
    assert response.status_code == 404
    assert "has no evaluation" in response.json()["detail"]
    carol.post(f"/v1/jobs/{created.json()['id']}/cancel")
