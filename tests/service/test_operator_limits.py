"""What an operator's settings refuse, over real HTTP: a server that requires declared labels,
with a lower epsilon cap limit, a lower delta limit and a tenant with limits of its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import REDIS, Server, answers
from tests.service.test_api import npz_bytes, upload

LABELS = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not answers(REDIS):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (make test starts one)")
    server = Server(tmp_path_factory.mktemp("strict"))
    server.env.update(
        PRIVEVO_REQUIRE_DECLARED_LABELS="true",
        PRIVEVO_MAX_EPSILON_CAP="4",
        PRIVEVO_MAX_DELTA="1e-6",
    )
    server.cli("keys", "create", "--tenant", "warmup")  # migrates the database
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dave(strict: Server) -> Iterator[httpx.Client]:
    with strict.client(strict.cli("keys", "create", "--tenant", "dave")) as client:
        yield client


def test_a_job_without_declared_labels_is_422_saying_how_to_fix_it(dave: httpx.Client) -> None:
    created = upload(dave, npz_bytes(1, offset=140))
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    before = dave.get(f"/v1/datasets/{dataset_id}/budget").json()
    body = {"dataset_id": dataset_id, "epsilon": 0.5, "num_samples": 20}
    refused = dave.post("/v1/jobs", json={**body, "delta": 2e-6})
    assert refused.status_code == 422, refused.text
    detail = refused.text
    assert "delta: 2e-06 is above this installation's maximum of 1e-06" in detail
    assert "labels: this installation requires the label set to be declared" in detail
    assert dave.get(f"/v1/datasets/{dataset_id}/budget").json() == before
    assert dave.get("/v1/jobs").json()["items"] == []
    accepted = dave.post("/v1/jobs", json={**body, "labels": LABELS})
    assert accepted.status_code == 202, accepted.text


def test_a_tenants_own_cap_limits_take_the_servers_place(
    strict: Server, dave: httpx.Client
) -> None:
    refused = upload(dave, npz_bytes(1, offset=150), epsilon_cap="5")
    assert refused.status_code == 422, refused.text
    assert "epsilon_cap: 5 is above this installation's maximum of 4" in refused.json()["detail"]
    shown = strict.cli(
        "tenants", "limits", "--tenant", "dave", "--max-epsilon-cap", "8", "--max-delta-cap", "1e-7"
    )
    assert shown.splitlines()[:2] == ["max_epsilon_cap   8", "max_delta_cap     1e-07"]
    raised = upload(dave, npz_bytes(1, offset=150), epsilon_cap="5", delta_cap="1e-7")
    assert raised.status_code == 201, raised.text
    lowered = upload(dave, npz_bytes(1, offset=160), epsilon_cap="5")
    assert lowered.status_code == 422, lowered.text
    assert "delta_cap: 1e-05 is above your maximum of 1e-07" in lowered.json()["detail"]


def test_the_cli_shows_and_resets_a_tenants_quotas_and_refuses_bad_values(strict: Server) -> None:
    strict.cli("keys", "create", "--tenant", "erin")
    shown = strict.cli("tenants", "limits", "--tenant", "erin", "--max-queued-jobs", "3")
    assert "max_queued_jobs   3" in shown
    assert "max_stored_bytes  PRIVEVO_MAX_STORED_BYTES (the server's setting)" in shown
    reset = strict.cli("tenants", "limits", "--tenant", "erin", "--max-queued-jobs", "default")
    assert "max_queued_jobs   PRIVEVO_MAX_QUEUED_JOBS (the server's setting)" in reset
    for args, message in [
        (("--tenant", "erin", "--max-queued-jobs", "many"), "--max-queued-jobs 'many': give"),
        (("--tenant", "erin", "--max-epsilon-cap", "-1"), "max_epsilon_cap must be finite"),
        (("--tenant", "nobody"), "no tenant is called 'nobody'"),
    ]:
        refused = subprocess.run(
            [sys.executable, "-m", "privevo.cli", "tenants", "limits", *args],
            env=strict.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
