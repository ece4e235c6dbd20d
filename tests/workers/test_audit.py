"""Audit jobs in the job runner (no Celery): the canaries, the report, the charge, and what a
second delivery of an interrupted audit does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pe_core.apis import create_api
from pe_core.audit import AuditPlan, run_audit
from pe_core.datasets import load_dataset
from pe_core.embedders import create_embedder
from pe_core.job import read_run_record
from service.db import get_dataset
from tests.workers.support import ITERATIONS, Home, worker_context
from tests.workers.test_jobs import job_folder
from workers import jobs

AUDIT = {"canaries": 60, "guesses": 20, "seed": 11}
SAMPLES = 60  # Home.new_job's


class WorkerDied(BaseException):
    """Stops a delivery the way a killed worker does: no finalize, the job left running."""


def audit_report(home: Home, job_id: str) -> dict[str, Any]:
    return json.loads(home.file(f"results/{job_id}/audit.json").read_text())


def test_an_audit_job_reports_its_bound_and_pays_its_reservation(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3, audit={**AUDIT, "seed": None})
    assert jobs.run_job(worker_context(home), job_id) == "succeeded", home.job(job_id).error
    job = home.job(job_id)
    report = audit_report(home, job_id)
    # The canaries' seed was drawn at the first start, recorded, and named everywhere.
    (started,) = home.events(job_id, "started")
    recorded = read_run_record(job_folder(home, job_id) / "state")
    assert recorded is not None
    seed = recorded.source["audit"]["seed"]
    assert started == {"seed": recorded.job.seed, "audit": {**AUDIT, "seed": seed}}
    assert report["canaries"]["seed"] == seed
    assert (report["m"], report["r"], report["mode"], report["confidence"]) == (
        60,
        20,
        "white-box",
        0.95,
    )
    assert report["guesses"]["in"] + report["guesses"]["out"] == 20
    assert report["job_id"] == job_id and report["dataset_id"] == job.dataset_id
    assert math.isfinite(report["epsilon_lower_bound"]) and report["epsilon_lower_bound"] >= 0
    assert math.isclose(report["claimed_epsilon"], job.epsilon_spent, rel_tol=1e-9)
    assert "spends that dataset's budget" in report["budget"]
    assert "NOT PRIVATE" in report["warnings"][0]  # the seeded test noise says so
    (event,) = home.events(job_id, "audit")
    assert event["epsilon_lower_bound"] == report["epsilon_lower_bound"]
    assert event["correct"] == report["guesses"]["correct"]
    # Charged like any job that released: its whole reservation.
    assert (job.epsilon_charged, job.delta_charged) == (4.0, 1e-5)
    # Every canary was pinned in every vote: each release counts the population and them.
    releases = home.releases(job_id)
    assert [r.mechanism for r in releases] == [f"iteration-{t}/histogram" for t in (1, 2)]
    for release in releases:
        with np.load(home.file(release.storage_path)) as npz:
            assert len(npz["values"]) == SAMPLES + AUDIT["canaries"]
    # The usual result beside it, which says it is an audit; no canary is a synthetic sample.
    privacy = json.loads(home.file(f"results/{job_id}/privacy_report.json").read_text())
    assert privacy["run"]["audit"] == {**AUDIT, "seed": seed}
    labels = home.file(f"results/{job_id}/synthetic/labels.csv").read_text()
    assert len(labels.splitlines()) == SAMPLES + 1 and "audit-canary" not in labels


def test_an_audit_interrupted_after_a_release_fails_charged_on_its_next_delivery(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3, audit=AUDIT)

    def die_after_the_first_release(self: jobs.JobProgress, report: Any) -> None:
        if report.iteration == 1:
            raise WorkerDied

    with monkeypatch.context() as patch:
        patch.setattr(jobs.JobProgress, "on_iteration", die_after_the_first_release)
        with pytest.raises(WorkerDied):
            jobs.run_job(worker_context(home), job_id)
    assert home.job(job_id).status == "running"
    assert len(home.releases(job_id)) == 1
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error == jobs.AUDIT_INTERRUPTED
    assert (job.epsilon_charged, job.delta_charged) == (4.0, 1e-5)
    assert len(home.releases(job_id)) == 1  # no second run, no new release
    assert home.storage.list(jobs.result_prefix(job_id)) == []


def test_an_audit_interrupted_before_any_release_runs_again_from_its_start(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3, audit=AUDIT)

    def die_at_the_first_vote(self: jobs.JobProgress, iteration: int, phase: str) -> None:
        if (iteration, phase) == (1, "vote"):
            raise WorkerDied

    with monkeypatch.context() as patch:
        patch.setattr(jobs.JobProgress, "on_phase", die_at_the_first_vote)
        with pytest.raises(WorkerDied):
            jobs.run_job(worker_context(home), job_id)
    assert home.releases(job_id) == []
    assert any((job_folder(home, job_id) / "state" / "checkpoints").iterdir())
    assert jobs.run_job(worker_context(home), job_id) == "succeeded", home.job(job_id).error
    assert [e["iteration"] for e in home.events(job_id, "iteration")] == [0, 0, 1, 2]
    # The same audit as one uninterrupted delivery of the same job makes.
    again = home.new_job(insecure_test_noise=True, seed=3, audit=AUDIT)
    assert jobs.run_job(worker_context(home), again) == "succeeded"
    first, second = audit_report(home, job_id), audit_report(home, again)
    for report in (first, second):
        del report["job_id"], report["dataset_id"]
    assert first == second
    assert len(home.releases(job_id)) == ITERATIONS


def test_a_worker_audits_a_job_as_the_cli_does(home: Home, tmp_path: Path) -> None:
    """One audit path: pe_core.audit's stages around the service's run (database ledger,
    progress, publishing) give the report that ``run_audit`` (``privevo audit``) gives for the
    same job, data and seeds."""
    job_id = home.new_job(insecure_test_noise=True, seed=3, audit=AUDIT)
    assert jobs.run_job(worker_context(home), job_id) == "succeeded", home.job(job_id).error
    job = home.job(job_id)
    recorded = read_run_record(job_folder(home, job_id) / "state")
    assert recorded is not None
    with home.sessions() as session:
        dataset = get_dataset(session, job.tenant_id, job.dataset_id)
    real = load_dataset(home.storage.path(dataset.storage_path), labels=list(dataset.labels))
    spec = recorded.job
    local = run_audit(
        spec,
        real,
        api=create_api(spec.api, label_names=real.label_names, **spec.api_config),
        embedder=create_embedder(spec.embedding, **spec.embedding_config),
        plan=AuditPlan(canaries=AUDIT["canaries"], guesses=AUDIT["guesses"], seed=AUDIT["seed"]),
        state_dir=tmp_path / "state",
    )
    published = audit_report(home, job_id)
    assert (published.pop("job_id"), published.pop("seed")) == (job_id, 3)
    assert published.pop("dataset_id") == job.dataset_id
    assert published == json.loads(json.dumps(local.report(spec)))


def test_an_audit_of_user_level_data_fails_before_any_release(home: Home) -> None:
    """A spec that did not come through the gateway (which refuses it with 422): the canaries
    are single records, so the worker refuses to add them to user-level data, refunded."""
    job_id = home.new_job(insecure_test_noise=True, seed=3, user_column="patient", audit=AUDIT)
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error == (
        "cannot audit this job: the records name their users; an audit tests record-level data"
    )
    assert home.releases(job_id) == []
    assert (job.epsilon_charged, job.delta_charged) == (0.0, 0.0)
