"""Encryption at rest end to end: the gateway and a real worker with a master key, storing on
the local backend; nothing private is readable at rest, and a delete crypto-shreds the dataset
(the format and key ring themselves: test_crypto.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from pe_core.embedders.raw_pixels import RawPixelsEmbedder
from service.crypto import DecryptionError, EncryptedStorage, KeyUnwrapError, unwrap_key
from service.storage import LocalStorage
from tests.conftest import digits_28
from tests.servers import gateway_with_worker, wait_for_end

pytestmark = pytest.mark.slow

# A broker database of its own: other modules' workers must not take this module's messages.
BROKER_URL = "redis://127.0.0.1:6379/10"
FAST = {"iterations": 2, "num_samples": 40, "embedding_config": {"size": 14}}


class Fixed:
    """A key ring holding one given data key (to try a key on an object)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def data_key(self, key: str, *, create: bool) -> bytes:
        return self.key


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("fanout", [False, True], ids=["one-worker", "fanned-out"])
def test_nothing_private_is_readable_at_rest_and_a_delete_shreds(
    tmp_path: Path, fanout: bool
) -> None:
    master = os.urandom(32)
    digits = digits_28(6, offset=0)
    buffer = io.BytesIO()
    np.savez(buffer, images=digits.images, labels=digits.labels)
    # Private records, byte for byte as the upload holds them (np.savez stores them raw).
    planted = [image.tobytes() for image in digits.images[:3]]
    assert all(record in buffer.getvalue() for record in planted)
    # ... and as the vote sees them: the fanned-out vote caches its shards' embeddings.
    embedded = RawPixelsEmbedder(**FAST["embedding_config"]).embed(digits.take([0, 1, 2]))
    planted += [vector.astype(np.float32).tobytes() for vector in embedded]
    database_url = f"sqlite:///{tmp_path / 'privevo.sqlite3'}"
    env = {"PRIVEVO_MASTER_KEY": base64.b64encode(master).decode()}
    if fanout:  # 60 records in 3 shards, counted by the job's own worker, the only one here
        env |= {"PRIVEVO_VOTE_SHARD_RECORDS": "20", "PRIVEVO_VOTE_CLAIM_AFTER_S": "0"}
    root = tmp_path / "storage"
    with (
        gateway_with_worker(tmp_path, database_url, BROKER_URL, **env) as gateway,
        gateway.client(gateway.cli("keys", "create", "--tenant", "dora")) as dora,
    ):
        response = dora.post(
            "/v1/datasets",
            files={"file": ("digits.npz", buffer.getvalue())},
            data={"name": "digits", "modality": "image", "epsilon_cap": "1.0"},
        )
        assert response.status_code == 201, response.text
        dataset_id = response.json()["id"]
        created = dora.post("/v1/jobs", json={"dataset_id": dataset_id, "epsilon": 1.0, **FAST})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        job = wait_for_end(dora, job_id, gateway.home / "worker.log")
        assert (job["status"], job["error"]) == ("succeeded", None)
        result = dora.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 200, result.text
        with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
            assert json.loads(archive.read("privacy_report.json"))["status"] == "DP"

        objects = LocalStorage(root / "encrypted")
        keys = objects.list()
        assert any(key.startswith("uploads/") for key in keys)
        assert f"results/{job_id}/privacy_report.json" in keys
        cached = [key for key in keys if key.startswith(f"datasets/{dataset_id}/embeddings/")]
        assert len(cached) == (3 if fanout else 0)
        assert not [key for key in keys if "/votes/" in key]  # partials go once released
        # The job's checkpoints and noisy releases are stored encrypted, and none stays in the
        # worker's work folder (the root), whose copies are plaintext while the job runs.
        state = [key for key in keys if key.startswith(f"datasets/{dataset_id}/jobs/{job_id}/")]
        assert any("/state/checkpoints/" in key for key in state)
        assert any("/state/releases/" in key for key in state)
        for key in state:
            assert not (objects.root / key).read_bytes().startswith((b"PK", b"{"))
        assert not [p for p in (root / "datasets").rglob("*") if p.is_file()]
        # No private record anywhere in the service's home: objects, work folder, database.
        for record in planted:
            assert files_holding(tmp_path, record) == []
        upload_key = next(key for key in keys if key.startswith("uploads/"))
        backup = (objects.root / upload_key).read_bytes()

        assert dora.delete(f"/v1/datasets/{dataset_id}").status_code == 204
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(text("SELECT scope, wrapped FROM data_keys")).all()
        finally:
            engine.dispose()
        assert dataset_id not in {scope for scope, _ in rows}
        left = objects.list()
        assert not [key for key in left if key.startswith(("uploads/", "datasets/"))]
        assert not (root / "datasets" / dataset_id).exists()
        # The DP result keeps a key of its own and is still served.
        assert dora.get(f"/v1/jobs/{job_id}/result").status_code == 200

    # A copy of the upload kept from before the delete opens with no key that remains.
    with objects.open_write(upload_key) as writer:
        writer.write(backup)
    for scope, wrapped in rows:
        data_key = unwrap_key(master, wrapped, scope)
        with (
            pytest.raises(DecryptionError),
            EncryptedStorage(objects, Fixed(data_key)).open_read(upload_key) as reader,
        ):
            reader.read()
        with pytest.raises(KeyUnwrapError):
            unwrap_key(master, wrapped, dataset_id)
