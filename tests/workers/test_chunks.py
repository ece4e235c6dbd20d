"""One job's generation over many workers: chunks made anywhere give what the job's own worker
makes alone, each chunk is made once, and 3 real Celery workers share the work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pe_core.apis import create_api
from pe_core.config import PeJob
from service.db import FINAL_STATUSES, Job, Shard, read_transaction
from tests.workers.support import (
    Home,
    start_worker,
    stop_worker,
    wait_for,
    worker_context,
    worker_logs,
)
from workers import chunks, fanout, jobs

CHUNK_SAMPLES = 8  # Home.new_job's 60 samples: 8 chunks per call of the whole population
SPEC = {"insecure_test_noise": True, "seed": 11, "lookahead": 2}


def plan(send: fanout.Send = lambda *message: None) -> fanout.Fanout:
    """Generation in chunks of 8 (the vote counted in the job's worker); chunk tasks go to
    ``send`` (by default nowhere: the job's worker makes every chunk)."""
    return fanout.Fanout(
        shard_records=0,
        claim_after_s=10.0,
        stale_after_s=600.0,
        renew_s=0.05,
        send=send,
        chunk_samples=CHUNK_SAMPLES,
    )


def digests(home: Home, job_id: str) -> list[tuple[str, str]]:
    return [(release.mechanism, release.sha256) for release in home.releases(job_id)]


def chunk_rows(home: Home, job_id: str) -> list[Shard]:
    statement = select(Shard).where(Shard.job_id == job_id, Shard.step > 0)
    with home.sessions() as session, read_transaction(session):
        return list(session.scalars(statement))


def alone(root: Path) -> list[tuple[str, str]]:
    """The releases of the job of ``SPEC`` made in chunks by its own worker alone."""
    root.mkdir()
    home = Home.create(root)
    job_id = home.new_job(**SPEC)
    assert jobs.run_job(worker_context(home, fanout=plan()), job_id) == "succeeded"
    report = json.loads(home.file(f"results/{job_id}/privacy_report.json").read_text())
    assert report["run"]["generation_chunk_samples"] == CHUNK_SAMPLES
    return digests(home, job_id)


def test_the_size_rule_for_generation() -> None:
    api = create_api("drawtext", label_names=("0", "1"))
    spec = PeJob(num_samples=60)
    assert not chunks.chunked(spec, api, 0)  # 0: never
    assert not chunks.chunked(spec, api, 60)
    assert chunks.chunked(spec, api, 59)
    assert chunks.chunked(PeJob(num_samples=10, candidates=100), api, 59)

    class Capped:  # an API with per-job state (the llm API's request caps)
        def for_new_job(self) -> Capped:
            return self

    assert not chunks.chunked(spec, Capped(), 59)  # type: ignore[arg-type]


def test_chunks_made_by_other_workers_give_what_the_jobs_worker_makes_alone(
    tmp_path: Path,
) -> None:
    expected = alone(tmp_path / "alone")
    assert len(expected) == 2
    (tmp_path / "fleet").mkdir()
    home = Home.create(tmp_path / "fleet")
    job_id = home.new_job(**SPEC)
    made: list[str] = []

    def send(task: str, args: tuple[Any, ...], queue: str) -> None:
        # Another worker takes the chunk's message at once and makes it.
        assert task == chunks.GENERATE_CHUNK_TASK and queue == "cpu"
        made.append(chunks.make_chunk(fleet, fleet_plan, *args))
        # The message delivered again finds its chunk made.
        assert chunks.make_chunk(fleet, fleet_plan, *args) == "not-claimed"

    fleet_plan = plan(send)
    fleet = worker_context(home, fanout=fleet_plan)
    assert jobs.run_job(fleet, job_id) == "succeeded", home.job(job_id).error
    assert digests(home, job_id) == expected
    assert made and set(made) == {"made"}
    rows = chunk_rows(home, job_id)
    assert len(rows) == len(made) and all(row.done_at is not None for row in rows)
    # Iteration 0 makes 10 labels' first samples, one call each; each later iteration makes
    # the lookahead embeddings, then each label's variations.
    assert {row.step for row in rows if row.iteration == 0} == set(range(1, 11))
    assert max(row.shard for row in rows) == 60 // CHUNK_SAMPLES  # 60 samples, 8 chunks
    job = home.job(job_id)
    assert home.storage.list(f"{jobs.job_prefix(job.dataset_id, job.id)}/generate") == []


def final(home: Home, job_id: str) -> Job | None:
    job = home.job(job_id)
    return job if job.status in FINAL_STATUSES else None


@pytest.mark.slow
def test_three_workers_make_one_jobs_generation_as_its_worker_does_alone(
    tmp_path: Path, redis_db: object
) -> None:
    expected = alone(tmp_path / "alone")
    (tmp_path / "fleet").mkdir()
    home = Home.create(tmp_path / "fleet")
    job_id = home.new_job(**SPEC)
    env = {"PRIVEVO_GENERATION_CHUNK_SAMPLES": str(CHUNK_SAMPLES)}
    workers = [start_worker(home, **env) for _ in range(3)]
    try:
        home.courier().deliver()
        job = wait_for("the job to end", lambda: final(home, job_id), timeout_s=300)
    finally:
        for worker in workers:
            stop_worker(worker)
    assert job.status == "succeeded", worker_logs(home)
    assert digests(home, job_id) == expected
    rows = chunk_rows(home, job_id)
    assert rows and all(row.done_at is not None for row in rows)
    made_by = {row.claimed_by.split("/")[-2] for row in rows if row.claimed_by}
    assert made_by <= {str(worker.pid) for worker in workers}
    assert len(made_by) >= 2, made_by  # the job's worker and at least one other
    assert "Traceback" not in worker_logs(home)
