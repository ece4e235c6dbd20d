"""Jobs evaluated on held-out data, run by the job runner (no Celery): the NOT DP scores per
iteration and the memorisation check land beside the job's private state, never in its
result; overlapping or vanished held-out data fails the job before any release."""

from __future__ import annotations

import json
from pathlib import Path

from service.db import delete_dataset
from service.keys import evaluation_prefix
from service.storage import LocalStorage
from tests.conftest import digits_28
from tests.workers.support import ITERATIONS, Home, worker_context
from workers import jobs


def test_an_evaluated_job_scores_every_iteration_apart_from_its_result(home: Home) -> None:
    # 5 held-out digits of each label, after the 20 per label the job runs on.
    job_id = home.new_job(
        insecure_test_noise=True,
        seed=3,
        heldout=digits_28(5, offset=40),
        embedding_config={"size": 14},  # 196 dimensions: the scores' eigensolves stay quick
    )
    assert jobs.run_job(worker_context(home), job_id) == "succeeded", home.job(job_id).error
    job = home.job(job_id)
    prefix = evaluation_prefix(job.dataset_id, job.id)

    metrics = json.loads(home.file(f"{prefix}/metrics.json").read_text())
    assert metrics["dp"] is False
    rows = metrics["per_iteration"]
    assert [row["iteration"] for row in rows] == list(range(ITERATIONS + 1))
    for row in rows:
        assert set(row) == {"iteration", "accuracy", "macro_f1", "fid", "precision", "recall"}
        assert 0 <= row["accuracy"] <= 1 and row["fid"] >= 0
    memorisation = json.loads(home.file(f"{prefix}/memorisation.json").read_text())
    assert memorisation["dp"] is False
    assert memorisation["baseline"] == 200 / (200 + 50)  # n / (n + h)
    assert 0 <= memorisation["closer_to_private"] <= 1

    # The page shows private records: owner-only, and never published.
    page = home.file(f"{prefix}/report-not-dp.html")
    assert oct(page.stat().st_mode & 0o777) == "0o600"
    assert oct(page.parent.stat().st_mode & 0o777) == "0o700"
    published = home.storage.list(jobs.result_prefix(job_id))
    assert published and not [k for k in published if "eval" in k or "not-dp" in k]
    phases = [event["phase"] for event in home.events(job_id, "progress")]
    assert phases.index("evaluate") < phases.index("publish")


def test_an_evaluation_made_apart_from_the_storage_is_stored_and_leaves_no_copy_behind(
    home: Home, tmp_path: Path
) -> None:
    # A remote or encrypted storage: the job works in a local folder of its own.
    work = LocalStorage(tmp_path / "work")
    staged = worker_context(home, work=work)
    job_id = home.new_job(
        insecure_test_noise=True,
        seed=3,
        heldout=digits_28(5, offset=40),
        embedding_config={"size": 14},
    )
    assert jobs.run_job(staged, job_id) == "succeeded", home.job(job_id).error
    job = home.job(job_id)
    prefix = evaluation_prefix(job.dataset_id, job.id)
    names = {key.removeprefix(f"{prefix}/") for key in home.storage.list(prefix)}
    assert {"metrics.json", "memorisation.json", "report-not-dp.html"} <= names
    # The page of private records is not left in the clear, nor is anything of the job.
    assert work.list(jobs.job_prefix(job.dataset_id, job.id)) == []


def test_held_out_records_that_are_private_fail_the_job_before_any_release(home: Home) -> None:
    # The first 2 digits of each label are among the job's own 20 per label.
    job_id = home.new_job(insecure_test_noise=True, seed=3, heldout=digits_28(2))
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error is not None
    assert job.error.startswith("20 evaluation record(s) also appear in the private data")
    assert home.releases(job_id) == []
    assert (job.epsilon_charged, job.delta_charged) == (0.0, 0.0)


def test_a_held_out_dataset_deleted_before_the_job_runs_fails_it_with_a_message(
    home: Home,
) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3, heldout=digits_28(5, offset=40))
    job = home.job(job_id)
    assert job.eval_dataset_id is not None
    with home.sessions() as session:
        delete_dataset(session, job.tenant_id, job.eval_dataset_id)
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error is not None
    assert job.error.startswith(f"the evaluation dataset {job.eval_dataset_id} was deleted")
    assert home.releases(job_id) == []
    assert (job.epsilon_charged, job.delta_charged) == (0.0, 0.0)
