"""The whole flow with a real Celery worker: upload, create, wait with progress, download."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from privevo_client import Client, JobFailed, NotFound

from tests.sdk.conftest import write_digits_npz
from tests.servers import Server

REPO = Path(__file__).resolve().parents[2]
FLOW_TIMEOUT_S = 60
"""How long the job may take; past it the test is skipped, saying where the job stood."""


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def worker(
    server: Server, alice_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    if not (REPO / "workers" / "tasks.py").exists():
        pytest.skip("workers/tasks.py does not exist: no worker can run jobs")
    # Jobs that other SDK tests left queued share this server's queue and would run first.
    with Client(server.url, alice_key) as alice:
        for job in alice.jobs.list():
            if not job.done:
                job.cancel()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
               "-P", "solo", "-Q", "cpu", "--loglevel", "warning"]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=server.env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
        )
    yield Worker(process, log)
    process.terminate()
    process.wait(timeout=30)


def test_upload_create_wait_download(
    alice: Client, worker: Worker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = write_digits_npz(tmp_path / "digits.npz", 6, offset=130)
    dataset = alice.datasets.upload(data, epsilon_cap=1.0)
    job = alice.jobs.create(dataset, epsilon=1.0, iterations=2, num_samples=40, api="drawtext")
    try:
        assert job.wait(timeout=FLOW_TIMEOUT_S, poll_interval=0.5) is job
    except JobFailed as failed:
        pytest.fail(f"{failed}\nworker log:\n{worker.log_tail()}")
    except TimeoutError:
        if worker.process.poll() is not None:
            pytest.fail(f"the worker exited ({worker.process.returncode}):\n{worker.log_tail()}")
        pytest.skip(
            f"no worker finished the job within {FLOW_TIMEOUT_S} s: it is {job.status} "
            f"(iteration {job.iteration}/{job.iterations}, phase {job.phase})"
        )

    assert (job.status, job.iteration, job.error) == ("succeeded", 2, None)
    assert 0 < job.epsilon_spent <= 1.0 + 1e-9
    progress = capsys.readouterr().err.splitlines()
    assert progress[-1].startswith(f"job {job.id} [{'#' * 20}] 2/2")
    assert progress[-1].endswith("succeeded")

    events = list(alice.jobs.events(job.id, page_size=2))  # several pages
    kinds = [e.kind for e in events]
    assert kinds[0] == "created" and "started" in kinds
    assert [e.id for e in events] == sorted(e.id for e in events)
    spent = [e.payload["epsilon_spent"] for e in events if e.kind == "iteration"]
    assert len(spent) >= 2 and spent == sorted(spent)
    assert spent[-1] == pytest.approx(job.epsilon_spent)

    budget = alice.datasets.budget(dataset.id)
    assert budget.epsilon_spent == job.epsilon_reserved  # it released: it pays all it reserved
    assert (budget.epsilon_reserved, budget.active_jobs) == (0.0, 0)

    out = job.download(tmp_path / "result")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"privacy_report.json", "report.html"} <= set(files)
    assert any(f.startswith("synthetic/") for f in files)
    assert not any(f.startswith((".state", "eval")) for f in files)
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["run"]["job_id"] == job.id


def test_an_evaluated_job_shows_its_owner_the_not_dp_scores(
    alice: Client,
    bob: Client,
    worker: Worker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    data = alice.datasets.upload(
        write_digits_npz(tmp_path / "mine.npz", 6, offset=140), epsilon_cap=1.0
    )
    held = alice.datasets.upload(
        write_digits_npz(tmp_path / "held.npz", 4, offset=100), role="heldout"
    )
    job = alice.jobs.create(
        data,
        epsilon=1.0,
        iterations=2,
        num_samples=40,
        api="drawtext",
        eval_dataset=held,
        embedding_config={"size": 14},
    )
    try:
        job.wait(timeout=FLOW_TIMEOUT_S, poll_interval=0.2)
    except JobFailed as failed:
        pytest.fail(f"{failed}\nworker log:\n{worker.log_tail()}")
    except TimeoutError:
        pytest.skip(f"no worker finished the job within {FLOW_TIMEOUT_S} s: it is {job.status}")
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].endswith("succeeded") and " eta " not in lines[-1]
    assert all(" eta " in line for line in lines[:-1])

    evaluation = job.evaluation()
    assert (evaluation.dp, evaluation.job_id, evaluation.eval_dataset_id) == (
        False,
        job.id,
        held.id,
    )
    assert [row.iteration for row in evaluation.per_iteration] == [0, 1, 2]
    assert evaluation.memorisation.baseline == 60 / (60 + 40)
    page = job.evaluation_report(tmp_path / "owner" / "report-not-dp.html")
    assert oct(page.stat().st_mode & 0o777) == "0o600"
    assert "NOT DP" in page.read_text()
    with pytest.raises(NotFound):
        bob.jobs.evaluation(job.id)
    out = job.download(tmp_path / "result")
    assert not [p for p in out.rglob("*") if "eval" in p.name or "not-dp" in p.name]


def test_an_audit_job_gives_its_owner_the_bound(
    alice: Client, bob: Client, worker: Worker, tmp_path: Path
):
    data = alice.datasets.upload(
        write_digits_npz(tmp_path / "stand-in.npz", 6, offset=152), epsilon_cap=1.0
    )
    job = alice.jobs.create(
        data,
        epsilon=1.0,
        iterations=2,
        num_samples=40,
        api="drawtext",
        embedding_config={"size": 14},
        insecure_test_noise=True,
        audit={"canaries": 40, "guesses": 10, "seed": 7},
    )
    try:
        job.wait(progress=False, timeout=FLOW_TIMEOUT_S, poll_interval=0.2)
    except JobFailed as failed:
        pytest.fail(f"{failed}\nworker log:\n{worker.log_tail()}")
    except TimeoutError:
        pytest.skip(f"no worker finished the job within {FLOW_TIMEOUT_S} s: it is {job.status}")
    audit = job.audit()
    assert (audit.job_id, audit.m, audit.r, audit.canaries["seed"]) == (job.id, 40, 10, 7)
    assert audit.epsilon_lower_bound >= 0
    assert audit.claimed_epsilon == pytest.approx(job.epsilon_spent)
    with pytest.raises(NotFound):
        bob.jobs.audit(job.id)
    out = job.download(tmp_path / "result")
    assert json.loads((out / "audit.json").read_text())["epsilon_lower_bound"] == (
        audit.epsilon_lower_bound
    )
