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
import yaml
from sqlalchemy import create_engine, text

from tests.conftest import digits_28
from tests.servers import (
    REPO,
    S3_CREDENTIALS,
    S3Server,
    Server,
    gateway_with_worker,
    start_worker,
    wait_for_end,
)
from tests.workers.support import is_stopped, wait_for

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


def s3_settings(s3_server: S3Server) -> dict[str, str]:
    """The settings of the s3 backend on a new bucket of ``s3_server``."""
    return {
        **S3_CREDENTIALS,
        "PRIVEVO_STORAGE_BACKEND": "s3",
        "PRIVEVO_S3_BUCKET": s3_server.new_bucket(),
        "PRIVEVO_S3_PREFIX": "privevo",
        "PRIVEVO_S3_ENDPOINT_URL": s3_server.url,
    }


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def test_uploads_results_and_evaluations_live_in_the_bucket(
    s3_server: S3Server, tmp_path: Path
) -> None:
    env = s3_settings(s3_server)
    bucket = env["PRIVEVO_S3_BUCKET"]
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
        # The job's files live in the bucket, so that any worker can resume it; none stays on
        # the worker.
        state = f"privevo/datasets/{data['id']}/jobs/{job_id}/state"
        assert {f"{state}/run.json", f"{state}/checkpoints/iter_002.json"} <= set(objects)
        assert [n for n in objects if n.startswith(f"{state}/releases/")]
        # Uploads are staged locally only while they are received and checked.
        assert not list((tmp_path / "storage" / "uploads").rglob("*.npz"))
        assert not files_under(tmp_path / "storage" / "datasets")

        assert carol.delete(f"/v1/datasets/{data['id']}").status_code == 204
        gone = s3_server.objects(bucket)
        assert not [n for n in gone if n.startswith(f"privevo/datasets/{data['id']}/")]
        assert not (tmp_path / "storage" / "datasets" / data["id"]).exists()
        # The dataset's upload is gone; the held-out data's stays, and so does the result.
        uploads = [n for n in gone if n.startswith("privevo/uploads/")]
        assert uploads == [f"privevo/{keys[1]}"]
        assert set(results) <= set(gone)


def test_a_job_whose_worker_was_killed_resumes_on_a_worker_with_a_disk_of_its_own(
    s3_server: S3Server, tmp_path: Path
) -> None:
    # The production shape: workers share the bucket and the database, no file system.
    server = Server(tmp_path, database_url=f"sqlite:///{tmp_path / 'privevo.sqlite3'}")
    server.env.update(s3_settings(s3_server), PRIVEVO_BROKER_URL=BROKER_URL)
    # Redis would hand the killed worker's message out again only after an hour: the second
    # worker's sweeper sends it again once the job's heartbeat is 3 s old.
    slow_redelivery = {"PRIVEVO_VISIBILITY_TIMEOUT_S": "3600"}
    first_disk, second_disk = tmp_path / "first", tmp_path / "second"
    server.start()
    try:
        with server.client(server.cli("keys", "create", "--tenant", "dora")) as dora:
            data = upload(dora, npz(6, offset=0), epsilon_cap="1.0")
            first = start_worker(
                server,
                "first.log",
                "tests.workers.stopping_app",
                PRIVEVO_TEST_STOP_AT="after-record",
                PRIVEVO_STORAGE_ROOT=str(first_disk),
                **slow_redelivery,
            )
            try:
                created = dora.post("/v1/jobs", json={"dataset_id": data["id"], **FAST})
                assert created.status_code == 202, created.text
                job_id = created.json()["id"]
                wait_for("the first worker to record a release", lambda: is_stopped(first.pid))
            finally:
                first.kill()
                first.wait()
            assert files_under(first_disk / "datasets")  # a killed worker's copy stays behind
            second = start_worker(
                server,
                "second.log",
                PRIVEVO_STORAGE_ROOT=str(second_disk),
                PRIVEVO_STALE_AFTER_S="3",
                PRIVEVO_SWEEP_INTERVAL_S="1",
                **slow_redelivery,
            )
            try:
                job = wait_for_end(dora, job_id, tmp_path / "second.log")
            finally:
                second.terminate()
                second.wait(timeout=30)
            assert (job["status"], job["error"]) == ("succeeded", None)
            events = dora.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
            seeds = [e["payload"]["seed"] for e in events if e["kind"] == "started"]
            assert len(seeds) == 2 and seeds[0] == seeds[1]  # resumed, with the recorded seed
            iterations = [e["payload"]["iteration"] for e in events if e["kind"] == "iteration"]
            assert iterations == [0, 1, 2]  # iteration 1 was not made twice
            releases = [e["payload"] for e in events if e["kind"] == "release"]
            assert len(releases) == FAST["iterations"]
            assert not files_under(second_disk / "datasets")
            # A worker started again on the killed one's disk deletes what it left there.
            again = start_worker(
                server,
                "again.log",
                PRIVEVO_STORAGE_ROOT=str(first_disk),
                PRIVEVO_STALE_AFTER_S="3",
                PRIVEVO_SWEEP_INTERVAL_S="1",
            )
            try:
                wait_for("the left files to go", lambda: not files_under(first_disk / "datasets"))
            finally:
                again.terminate()
                again.wait(timeout=30)
    finally:
        server.stop()


def test_the_production_shape_shares_no_volume_between_containers() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    mounts = {
        name: [volume.split(":")[0] for volume in service.get("volumes", [])]
        for name, service in compose["services"].items()
    }
    named = [volume for volumes in mounts.values() for volume in volumes]
    assert len(named) == len(set(named)), mounts
    assert {name: mounts[name] for name in ("gateway", "worker-cpu", "worker-gpu")} == {
        "gateway": [],
        "worker-cpu": [],
        "worker-gpu": [],
    }
