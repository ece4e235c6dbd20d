"""A job's vote fanned out over shards: the same release as one worker's, counted exactly once.

Seeded test noise makes the releases comparable: two runs whose clean counts are equal draw
equal noisy vectors, so equal release digests mean equal counts, bit for bit.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from pe_core.samples import Samples
from pe_core.votes import LocalVotes, prepare_private
from service.db import (
    FINAL_STATUSES,
    Job,
    Shard,
    claim_shard,
    get_dataset,
    open_shards,
    read_transaction,
    shard_rows,
)
from service.db.models import utcnow
from service.storage import ObjectNotFoundError
from tests.workers.support import (
    Home,
    is_stopped,
    start_worker,
    stop_worker,
    wait_for,
    worker_context,
    worker_logs,
)
from workers import fanout, jobs
from workers.lease import process_name

SHARD_RECORDS = 60  # Home.new_job's 200 records: 4 shards
SPEC = {"insecure_test_noise": True, "seed": 11}
USERS = {"user_column": "patient", "privacy_unit": "user", "votes_per_user": 2}


def context(home: Home, sent: list[tuple[object, ...]] | None = None) -> jobs.JobContext:
    """A worker's context whose shard messages go nowhere (or into ``sent``): with no wait
    before taking over, the coordinator counts every shard itself."""
    plan = fanout.Fanout(
        shard_records=SHARD_RECORDS,
        claim_after_s=0.0,
        stale_after_s=600.0,
        renew_s=0.05,
        send=lambda *message: None if sent is None else sent.append(message),
    )
    return worker_context(home, fanout=plan)


def digests(home: Home, job_id: str) -> list[tuple[str, str]]:
    return [(release.mechanism, release.sha256) for release in home.releases(job_id)]


def shards(home: Home, job_id: str) -> list[Shard]:
    statement = select(Shard).where(Shard.job_id == job_id)
    with home.sessions() as session, read_transaction(session):
        return list(session.scalars(statement.order_by(Shard.iteration, Shard.shard)))


def one_worker_and_a_fleet(root: Path, **unit: Any) -> tuple[list[tuple[str, str]], Home, str]:
    """The job of ``SPEC`` (and ``unit``) run by one worker counting alone, and the same job
    queued in a second installation: (the first run's releases, the second installation, its
    job)."""
    (root / "alone").mkdir()
    (root / "spread").mkdir()
    alone, spread = Home.create(root / "alone"), Home.create(root / "spread")
    reference = alone.new_job(**unit, **SPEC)
    assert jobs.run_job(worker_context(alone), reference) == "succeeded", alone.job(reference).error
    released = digests(alone, reference)
    assert len(released) == 2
    return released, spread, spread.new_job(**unit, **SPEC)


def shard_rows_of(home: Home, job_id: str) -> list[Shard]:
    with home.sessions() as session:
        return shard_rows(session, job_id, 1)


def load_private(home: Home, job: Job) -> Samples:
    with home.sessions() as session:
        dataset = get_dataset(session, job.tenant_id, job.dataset_id)
    return jobs.load_private(home.storage, dataset, jobs.job_spec(job))


def test_the_size_rule() -> None:
    assert fanout.shard_count(200, 0) == 1  # 0: never
    assert fanout.shard_count(200, 200) == 1
    assert fanout.shard_count(201, 200) == 2
    assert fanout.shard_count(1_000_000, 250_000) == 4


@pytest.mark.parametrize("unit", [{}, USERS], ids=["record", "user"])
def test_shards_release_what_one_worker_releases(tmp_path: Path, unit: dict) -> None:
    released, spread, second = one_worker_and_a_fleet(tmp_path, **unit)
    sent: list[tuple[object, ...]] = []
    assert jobs.run_job(context(spread, sent), second) == "succeeded", spread.job(second).error
    assert digests(spread, second) == released
    rows = shards(spread, second)
    assert [(row.iteration, row.shard) for row in rows] == [
        (t, s) for t in (1, 2) for s in range(4)
    ]
    assert all(row.done_at is not None and row.backend for row in rows)
    task = fanout.VOTE_SHARD_TASK
    assert sent == [(task, (second, t, s), "cpu") for t in (1, 2) for s in range(4)]
    job = spread.job(second)
    prefix = jobs.job_prefix(job.dataset_id, job.id)
    assert spread.storage.list(f"{prefix}/votes") == []  # partials go once released
    cached = spread.storage.list(f"datasets/{job.dataset_id}/embeddings")
    assert len(cached) == 4  # one embedding per shard, made once for both iterations


def test_a_broker_that_takes_no_shard_task_only_slows_the_vote(tmp_path: Path) -> None:
    released, spread, job_id = one_worker_and_a_fleet(tmp_path)

    def refused(*message: object) -> None:
        raise ConnectionError("the broker is down")

    plan = context(spread).fanout
    assert plan is not None
    down = worker_context(spread, fanout=replace(plan, send=refused))
    assert jobs.run_job(down, job_id) == "succeeded", spread.job(job_id).error
    assert digests(spread, job_id) == released


def test_each_users_records_stay_in_one_shard(home: Home) -> None:
    # Home.new_job's users: record i belongs to user i % 25, so each user has 8 records.
    job_id = home.new_job(**USERS, **SPEC)
    job = home.job(job_id)
    spec = jobs.job_spec(job)
    sizes = [fanout._shard_vectors(context(home), job, spec, 4, s).records for s in range(4)]
    assert sum(sizes) == 200 and all(size > 0 and size % 8 == 0 for size in sizes), sizes


def test_a_shard_counted_twice_is_summed_once(home: Home) -> None:
    job_id = home.new_job(**SPEC)
    job = home.job(job_id)
    spec = jobs.job_spec(job)
    plan = context(home)
    assert plan.fanout is not None
    private = load_private(home, job)
    rng = np.random.default_rng(0)
    synthetic = rng.normal(size=(30, 784)).astype(np.float32)
    labels = np.arange(30, dtype=np.int64) % 10
    counter = plan.fanout.counter(plan, job, spec, private, check=lambda: None)
    assert counter is not None
    # A worker whose claim went stale finishes after the coordinator redid its shard: its late
    # partial is the same work, and is dropped, not added.
    digest = fanout.synthetic_digest(synthetic, labels)
    fanout.write_npz(
        home.storage,
        f"{fanout.votes_prefix(job)}/1/{digest[:32]}/synthetic.npz",
        {"synthetic": synthetic, "labels": labels},
    )
    with home.sessions() as session:
        open_shards(session, job_id, 1, 4, digest)
        row = shard_rows(session, job_id, 1)[2]
    assert fanout.count_claimed(plan, plan.fanout, job, row) == "counted"
    assert fanout.count_claimed(plan, plan.fanout, job, row) == "superseded"
    assert fanout.count_shard(plan, plan.fanout, job_id, 1, 2) == "not-claimed"
    assert len(home.storage.list(f"{fanout.votes_prefix(job)}/1/{digest[:32]}")) == 2
    # A shard that fails gives its claim back and leaves no partial.
    home.storage.delete_prefix(f"{fanout.votes_prefix(job)}/1/{digest[:32]}/synthetic.npz")
    with home.sessions() as session:
        claimed = claim_shard(session, job_id, 1, 3, process_name(), stale_before=utcnow())
    assert claimed is not None
    with pytest.raises(ObjectNotFoundError):
        fanout.count_claimed(plan, plan.fanout, job, claimed)
    assert shard_rows_of(home, job_id)[3].claimed_by is None
    assert len(home.storage.list(f"{fanout.votes_prefix(job)}/1/{digest[:32]}")) == 1
    counts = counter.counts(1, synthetic, labels)
    prepared = prepare_private(
        private, jobs.cached_embedder(spec.embedding, spec.embedding_config).embed,
        metric=spec.metric, privacy_unit=spec.privacy_unit,
    )  # fmt: skip
    expected = LocalVotes(spec, prepared).counts(1, synthetic, labels)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == len(private) * spec.k
    counter.released(1)
    assert home.storage.list(fanout.votes_prefix(job)) == []


@pytest.mark.slow
def test_three_workers_run_one_job_as_one_worker_does(tmp_path: Path, redis_db: object) -> None:
    released, spread, job_id = one_worker_and_a_fleet(tmp_path)
    # Shards wait 60 s for a worker before the job's own worker counts them: here the two
    # other workers take them all.
    env = {"PRIVEVO_VOTE_SHARD_RECORDS": str(SHARD_RECORDS), "PRIVEVO_VOTE_CLAIM_AFTER_S": "60"}
    workers = [start_worker(spread, **env) for _ in range(3)]
    try:
        spread.courier().deliver()
        job = wait_for("the job to end", lambda: final(spread, job_id), timeout_s=300)
    finally:
        for worker in workers:
            stop_worker(worker)
    assert job.status == "succeeded", worker_logs(spread)
    assert digests(spread, job_id) == released
    rows = shards(spread, job_id)
    assert len(rows) == 8 and all(row.done_at is not None for row in rows)
    counted_by = {row.claimed_by.split("/")[-2] for row in rows if row.claimed_by}
    pids = {str(worker.pid) for worker in workers}
    assert counted_by <= pids and len(counted_by) >= 2, counted_by
    assert "Traceback" not in worker_logs(spread)


@pytest.mark.slow
def test_a_shard_whose_worker_dies_is_counted_again_once(tmp_path: Path, redis_db: object) -> None:
    released, spread, job_id = one_worker_and_a_fleet(tmp_path)
    # The job's worker waits 20 s for workers to take shards, and takes a shard over once its
    # claim is 3 s old: the doomed worker, started after the job, stops inside the first shard
    # it takes, and is killed there; a third worker then takes the shards left.
    env = {
        "PRIVEVO_VOTE_SHARD_RECORDS": str(SHARD_RECORDS),
        "PRIVEVO_VOTE_CLAIM_AFTER_S": "20",
        "PRIVEVO_STALE_AFTER_S": "3",
    }
    coordinator = start_worker(spread, **env)
    doomed = helper = None
    try:
        spread.courier().deliver()
        wait_for("the job to start", lambda: spread.job(job_id).status == "running")
        doomed = start_worker(
            spread, "tests.workers.stopping_app", PRIVEVO_TEST_STOP_AT="in-shard", **env
        )
        wait_for("a worker to stop inside a shard", lambda: is_stopped(doomed.pid))
        held = [row for row in shards(spread, job_id) if row.claimed_by and row.done_at is None]
        assert [row.claimed_by.split("/")[-2] for row in held] == [str(doomed.pid)]
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        helper = start_worker(spread, **env)
        job = wait_for("the job to end", lambda: final(spread, job_id), timeout_s=300)
    finally:
        for worker in (coordinator, doomed, helper):
            if worker is not None:
                stop_worker(worker)
    assert job.status == "succeeded", worker_logs(spread)
    assert digests(spread, job_id) == released  # counted once, not twice
    (redone,) = [row for row in shards(spread, job_id) if row.iteration == held[0].iteration
                 and row.shard == held[0].shard]  # fmt: skip
    assert redone.done_at is not None
    assert redone.claimed_by is not None
    assert redone.claimed_by.split("/")[-2] != str(doomed.pid)


def final(home: Home, job_id: str) -> Job | None:
    job = home.job(job_id)
    return job if job.status in FINAL_STATUSES else None


def test_a_job_not_above_the_size_rule_counts_alone(home: Home) -> None:
    job_id = home.new_job(**SPEC)
    plan = context(home)
    assert plan.fanout is not None
    bigger = fanout.Fanout(
        shard_records=1000, claim_after_s=0, stale_after_s=600, renew_s=1, send=plan.fanout.send
    )
    job = home.job(job_id)
    spec = jobs.job_spec(job)
    assert bigger.counter(plan, job, spec, load_private(home, job), lambda: None) is None
