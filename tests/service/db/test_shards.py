"""The shards of a fanned-out vote in the database, on SQLite and PostgreSQL: one claimant at a
time, stale claims taken over, done once, and reopened for another synthetic set."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db import (
    Shard,
    claim_shard,
    finish_shard,
    open_shards,
    release_claim,
    renew_claim,
    reserve,
    shard_rows,
    write_transaction,
)
from service.db.models import utcnow
from tests.service.db.support import new_dataset, new_tenant, run_together, sha256_of

THREADS = 8
DIGEST = sha256_of("synthetic set 1")


def new_job(session: Session) -> str:
    tenant = new_tenant(session)
    dataset = new_dataset(session, tenant, epsilon_cap=10.0)
    return reserve(session, tenant, dataset.id, 1.0, 1e-6, None, {}, iterations=2).id


def claim(session: Session, job_id: str, worker: str, **when: object) -> Shard | None:
    now = utcnow()
    return claim_shard(
        session, job_id, 1, 0, worker, stale_before=now - timedelta(seconds=60), **when
    )


@pytest.mark.parametrize("attempt", range(2))
def test_one_of_many_racing_workers_claims_a_shard(
    db_factory: sessionmaker[Session], attempt: int
) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        open_shards(session, job_id, 1, 3, DIGEST)

    outcomes = run_together(
        db_factory, THREADS, lambda session, index: claim(session, job_id, f"worker-{index}")
    )
    winners = [outcome for outcome in outcomes if isinstance(outcome, Shard)]
    assert len(winners) == 1 and outcomes.count(None) == THREADS - 1, outcomes
    with db_factory() as session:
        rows = shard_rows(session, job_id, 1)
    assert [row.claimed_by for row in rows] == [winners[0].claimed_by, None, None]


def test_a_stale_claim_is_taken_over_and_the_shard_finishes_once(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        open_shards(session, job_id, 1, 2, DIGEST)
        assert claim(session, job_id, "a") is not None
        assert claim(session, job_id, "b") is None  # a is alive
        assert renew_claim(session, job_id, 1, 0, "a")
        assert not renew_claim(session, job_id, 1, 0, "b")
        with write_transaction(session):
            session.get_one(Shard, (job_id, 1, 0, 0)).claimed_at = utcnow() - timedelta(hours=1)
        taken = claim(session, job_id, "b")  # a went silent: its shard is redone
        assert taken is not None and taken.claimed_by == "b"
        assert finish_shard(session, job_id, 1, 0, DIGEST, partial="b1", backend="numpy")
        # a comes back late with the same work: it is not counted again.
        assert not finish_shard(session, job_id, 1, 0, DIGEST, partial="a1", backend="numpy")
        assert claim(session, job_id, "c") is None  # done
        rows = shard_rows(session, job_id, 1)
    assert (rows[0].partial, rows[0].backend) == ("b1", "numpy")
    assert rows[0].done_at is not None and rows[1].done_at is None


def test_a_failed_worker_gives_its_claim_back(db_factory: sessionmaker[Session]) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        open_shards(session, job_id, 1, 1, DIGEST)
        assert claim(session, job_id, "a") is not None
        release_claim(session, job_id, 1, 0, "b")  # not b's to give
        assert claim(session, job_id, "b") is None
        release_claim(session, job_id, 1, 0, "a")
        assert claim(session, job_id, "b") is not None


def test_a_fresh_shard_waits_for_the_workers_before_the_coordinator_takes_it(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        open_shards(session, job_id, 1, 1, DIGEST)
        an_hour_ago = utcnow() - timedelta(hours=1)
        assert claim(session, job_id, "coordinator", unclaimed_since=an_hour_ago) is None
        assert claim(session, job_id, "coordinator", unclaimed_since=utcnow()) is not None


def test_another_synthetic_set_reopens_the_iterations_shards(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        open_shards(session, job_id, 1, 2, DIGEST)
        claim(session, job_id, "a")
        assert finish_shard(session, job_id, 1, 0, DIGEST, partial="a1", backend="numpy")
        open_shards(session, job_id, 1, 2, DIGEST)  # a redelivered coordinator, same set
        assert [row.done_at is not None for row in shard_rows(session, job_id, 1)] == [True, False]
        other = sha256_of("synthetic set 2")
        open_shards(session, job_id, 1, 2, other)
        rows = shard_rows(session, job_id, 1)
        assert [(row.synthetic_sha256, row.done_at, row.claimed_by) for row in rows] == [
            (other, None, None),
            (other, None, None),
        ]
        # The old set's late result is refused.
        assert not finish_shard(session, job_id, 1, 0, DIGEST, partial="a2", backend="numpy")


def test_a_claim_whose_process_has_exited_is_taken_over_at_once(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        open_shards(session, job_id, 1, 1, DIGEST)
        assert claim(session, job_id, "a") is not None
        assert claim(session, job_id, "b", gone=lambda holder: holder == "b") is None
        taken = claim(session, job_id, "b", gone=lambda holder: holder == "a")
        assert taken is not None and taken.claimed_by == "b"


def test_each_step_of_an_iteration_has_shards_of_its_own(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        open_shards(session, job_id, 0, 2, DIGEST, step=1)  # iteration 0: first samples
        open_shards(session, job_id, 0, 3, sha256_of("call 2"), step=2)
        assert claim_shard(
            session, job_id, 0, 1, "a", stale_before=utcnow() - timedelta(seconds=60), step=2
        )
        assert finish_shard(
            session, job_id, 0, 1, sha256_of("call 2"), partial="a", backend=None, step=2
        )
        first, second = (shard_rows(session, job_id, 0, step=step) for step in (1, 2))
    assert [row.shards for row in first] == [2, 2] and all(r.done_at is None for r in first)
    assert [row.done_at is not None for row in second] == [False, True, False]
