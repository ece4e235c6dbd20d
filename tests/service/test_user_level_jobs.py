"""A user-level job end to end: the gateway (``privevo serve``) on SQLite and on PostgreSQL, a
real ``celery worker`` process and Redis; no eager mode."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import digits_28
from tests.servers import Server, gateway_with_worker, wait_for_end

pytestmark = pytest.mark.slow

# A broker database of its own: the other modules' gateways send to database 13, and their
# messages must not reach this module's worker (nor this module's theirs).
BROKER_URL = "redis://127.0.0.1:6379/12"
ITERATIONS, VOTES_PER_USER = 2, 2


@pytest.fixture(scope="module")
def gateway(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``privevo serve`` and one worker, sharing a home, a database and a broker."""
    with gateway_with_worker(tmp_path_factory.mktemp("service"), db_url, BROKER_URL) as server:
        yield server


def npz(**arrays: np.ndarray) -> bytes:
    digits = digits_28(6)  # 60 records, 6 of each digit
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images, labels=digits.labels, **arrays)
    return buffer.getvalue()


def upload(client: httpx.Client, content: bytes, **fields: str) -> dict:
    data = {"name": "scans", "modality": "image", "epsilon_cap": "1.0", **fields}
    response = client.post("/v1/datasets", files={"file": ("scans.npz", content)}, data=data)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_user_level_job_runs_through_a_worker_on_its_own_budget(gateway: Server) -> None:
    with gateway.client(gateway.cli("keys", "create", "--tenant", "clinic")) as clinic:
        # 12 patients with 5 scans each, of several digits.
        by_user = upload(clinic, npz(patient=np.arange(60) % 12), user_column="patient")
        by_record = upload(clinic, npz(patient=np.arange(60) % 12))
        assert (by_user["privacy_unit"], by_record["privacy_unit"]) == ("user", "record")
        body = {
            "dataset_id": by_user["id"],
            "epsilon": 1.0,
            "iterations": ITERATIONS,
            "num_samples": 40,
            "votes_per_user": VOTES_PER_USER,
        }
        created = clinic.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job = wait_for_end(clinic, created.json()["id"], gateway.home / "worker.log")
        assert (job["status"], job["error"]) == ("succeeded", None)
        assert job["spec"]["privacy_unit"] == "user"

        result = clinic.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 200, result.text
        with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
            report = json.loads(archive.read("privacy_report.json"))
        assert report["status"] == "DP"
        assert report["unit_of_privacy"] == "one user: all records that name the same user"
        assert report["neighbouring_relation"] == "add/remove one user with all of their records"
        assert report["votes_per_user"] == VOTES_PER_USER
        assert report["releases"] == VOTES_PER_USER * ITERATIONS  # c releases per iteration
        assert 0 < report["epsilon"] <= 1.0

        # The user-level budget paid the whole reservation; the record-level copy of the same
        # records has its own budget, untouched.
        user_budget = clinic.get(f"/v1/datasets/{by_user['id']}/budget").json()
        record_budget = clinic.get(f"/v1/datasets/{by_record['id']}/budget").json()
        assert (user_budget["epsilon_spent"], user_budget["epsilon_remaining"]) == (1.0, 0.0)
        assert (record_budget["epsilon_spent"], record_budget["epsilon_reserved"]) == (0.0, 0.0)
        assert record_budget["epsilon_remaining"] == 1.0
