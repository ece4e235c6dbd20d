"""The service on the s3 storage backend: the gateway and a real worker, with moto's S3 server
holding uploads, results and evaluations (the storage contract itself: test_storage.py)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import digits_28
from tests.servers import S3_CREDENTIALS, S3Server, gateway_with_worker, wait_for_end

pytestmark = pytest.mark.slow

# A broker database of its own: other modules' workers must not take this module's messages.
BROKER_URL = "redis://127.0.0.1:6379/9"
FAST = {"iterations": 2, "num_samples": 40, "embedding_config": {"size": 14}}


def npz(n_per_label: int, *, offset: int) -> bytes:
    digits = digits_28(n_per_label, offset=offset)
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images, labels=digits.labels)
    return buffer.getvalue()


def upload(client: httpx.Client, content: bytes, **fields: str) -> dict:
    data = {"name": "digits", "modality": "image", **fields}
    response = client.post("/v1/datasets", files={"file": ("digits.npz", content)}, data=data)
    assert response.status_code == 201, response.text
    return response.json()


def stored_keys(database_url: str, *dataset_ids: str) -> list[str]:
    """The storage keys of the datasets' uploads, as the gateway recorded them."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = dict(connection.execute(text("SELECT id, storage_path FROM datasets")).all())
    finally:
        engine.dispose()
    return [rows[dataset_id] for dataset_id in dataset_ids]


def test_uploads_results_and_evaluations_live_in_the_bucket(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    env = {
        **S3_CREDENTIALS,
        "PRIVEVO_STORAGE_BACKEND": "s3",
        "PRIVEVO_S3_BUCKET": bucket,
        "PRIVEVO_S3_PREFIX": "privevo",
        "PRIVEVO_S3_ENDPOINT_URL": s3_server.url,
    }
    database_url = f"sqlite:///{tmp_path / 'privevo.sqlite3'}"
    with (
        gateway_with_worker(tmp_path, database_url, BROKER_URL, **env) as gateway,
        gateway.client(gateway.cli("keys", "create", "--tenant", "carol")) as carol,
    ):
        data = upload(carol, npz(6, offset=0), epsilon_cap="1.0")
        held = upload(carol, npz(4, offset=40), role="heldout")
        keys = stored_keys(database_url, data["id"], held["id"])
        assert s3_server.objects(bucket) == sorted(f"privevo/{key}" for key in keys)
        assert all(key.startswith("uploads/") for key in keys)
        body = {"dataset_id": data["id"], "epsilon": 1.0, "eval_dataset_id": held["id"]}
        created = carol.post("/v1/jobs", json={**body, **FAST})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        job = wait_for_end(carol, job_id, gateway.home / "worker.log")
        assert (job["status"], job["error"]) == ("succeeded", None)

        result = carol.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 200, result.text
        with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
            report = json.loads(archive.read("privacy_report.json"))
        assert report["status"] == "DP"
        evaluation = carol.get(f"/v1/jobs/{job_id}/evaluation")
        assert evaluation.status_code == 200, evaluation.text

        objects = s3_server.objects(bucket)
        results = [n for n in objects if n.startswith(f"privevo/results/{job_id}/")]
        assert f"privevo/results/{job_id}/privacy_report.json" in results
        evaluations = f"privevo/datasets/{data['id']}/jobs/{job_id}/out/eval/"
        assert f"{evaluations}metrics.json" in objects
        # Private working state stays in the local work folder, never in the bucket.
        assert not [n for n in objects if "/state/" in n]
        # Uploads are staged locally only while they are received and checked.
        assert not list((tmp_path / "storage" / "uploads").rglob("*.npz"))

        work = tmp_path / "storage" / "datasets" / data["id"] / "jobs" / job_id
        assert (work / "state").is_dir()
        assert carol.delete(f"/v1/datasets/{data['id']}").status_code == 204
        gone = s3_server.objects(bucket)
        assert not [n for n in gone if n.startswith(f"privevo/datasets/{data['id']}/")]
        assert not (tmp_path / "storage" / "datasets" / data["id"]).exists()
        # The dataset's upload is gone; the held-out data's stays, and so does the result.
        uploads = [n for n in gone if n.startswith("privevo/uploads/")]
        assert uploads == [f"privevo/{keys[1]}"]
        assert set(results) <= set(gone)
