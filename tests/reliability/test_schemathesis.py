"""Schemathesis over ``openapi.yaml`` against a real gateway, with real ids: every check it
has (no 5xx, statuses, content types, headers and bodies as documented, invalid data refused,
405s with a complete Allow...) except ``positive_data_acceptance``, which would call a
refusal by the budget or the job checks (409, 422) a failure.

Path ids are the tenant's real dataset and job 70% of the time (a schemathesis dictionary),
so requests reach each route's logic instead of stopping at 404. The short run makes a few
examples per operation on SQLite; the full run (``make test-reliability``) many, on
PostgreSQL too. Schemathesis's own report goes to the test's output on failure.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.conftest import FULL, gateway_on, key_for, scale
from tests.servers import Server
from tests.service.test_api import npz_bytes, upload

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
[generation]
# HTTP lets a client send headers and query parameters a route does not read; FastAPI
# ignores them, as it should, which schemathesis would count as accepting invalid data.
allow-extra-parameters = false

[dictionaries.datasets]
values = ["{dataset}"]

[dictionaries.jobs]
values = ["{job}"]

[parameters]
"path.dataset_id" = {{ dictionary = "datasets", probability = 0.7 }}
"path.job_id" = {{ dictionary = "jobs", probability = 0.7 }}
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"] if FULL else ["sqlite"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The short run fuzzes SQLite only; the full one PostgreSQL too."""
    yield from gateway_on(request.param, request, tmp_path_factory)


def test_schemathesis_finds_nothing_over_the_whole_api(
    fuzzed: Server, tmp_path: Path, figures: list[str]
) -> None:
    gateway = fuzzed
    database = "postgresql" if "PRIVEVO_DATABASE_URL" in gateway.env else "sqlite"
    key = key_for(gateway, "schemathesis")
    with gateway.client(key) as client:
        dataset = upload(client, npz_bytes(2, offset=130))
        assert dataset.status_code == 201, dataset.text
        body = {"dataset_id": dataset.json()["id"], "epsilon": 0.05, "iterations": 1}
        job = client.post("/v1/jobs", json=body).json()
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(dataset=dataset.json()["id"], job=job["id"]))
    examples = scale(10, 100)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        str(ROOT / "openapi.yaml"), "--url", gateway.url, "-H", f"Authorization: Bearer {key}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(examples), "--workers", "1", "--seed", "20261206",
        "--phases", "examples,coverage,fuzzing", "--request-timeout", "20",
        "--generation-database", "none", "--no-color",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=scale(240, 590), cwd=tmp_path
    )
    cases = re.search(r"(\d+) generated", done.stdout)
    figures.append(
        f"schemathesis ({database}, {examples} examples per operation): "
        f"{cases[1] if cases else '?'} test cases, exit {done.returncode}"
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
