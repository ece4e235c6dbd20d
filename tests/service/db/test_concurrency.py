"""Races between real threads, each with its own connection, on SQLite and PostgreSQL.

The threads are released together by a barrier, so their transactions overlap; without the
budget lock (FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite) several of them would read
the same usage and all be accepted.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import (
    BudgetExceeded,
    Job,
    JobFinished,
    Release,
    cancel,
    read_transaction,
    record_release,
    remaining,
    reserve,
    update_progress,
)
from service.db.outbox import (
    Outgoing,
    claim_outgoing,
    mark_sent,
    messages_to_check,
    replace_message,
)
from tests.service.db.support import (
    VOTES,
    new_dataset,
    new_tenant,
    run_together,
    sha256_of,
    silence,
)

THREADS = 8


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_reserves_accept_exactly_what_fits(
    db_factory: sessionmaker[Session], attempt: int
) -> None:
    with db_factory() as session:
        tenant = new_tenant(session)
        dataset = new_dataset(session, tenant, data=f"race {attempt}", epsilon_cap=1.0)

    def create(session: Session, index: int) -> Job:
        return reserve(session, tenant, dataset.id, 0.4, 1e-7, None, {"n": index}, iterations=1)

    outcomes = run_together(db_factory, THREADS, create)
    accepted = [o for o in outcomes if isinstance(o, Job)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert (len(accepted), len(refused)) == (2, THREADS - 2), outcomes
    assert len({job.id for job in accepted}) == 2
    with db_factory() as session:
        status = remaining(session, tenant, dataset.id)
    assert (status.epsilon_reserved, status.active_jobs) == (0.8, 2)


def test_concurrent_creates_with_one_idempotency_key_make_one_job(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        tenant = new_tenant(session)
        dataset = new_dataset(session, tenant, data="idempotent race")

    def create(session: Session, _index: int) -> Job:
        return reserve(session, tenant, dataset.id, 0.3, 1e-7, "retry-me", {}, iterations=1)

    outcomes = run_together(db_factory, THREADS, create)
    assert all(isinstance(o, Job) for o in outcomes), outcomes
    assert len({o.id for o in outcomes if isinstance(o, Job)}) == 1
    with db_factory() as session:
        assert remaining(session, tenant, dataset.id).epsilon_reserved == 0.3
        # One message in the outbox, whichever request made the job.
        (job_id,) = {o.id for o in outcomes if isinstance(o, Job)}
        assert [m.task_id for m in claim_outgoing(session, job_id=job_id)] == [f"{job_id}.1"]


def test_concurrent_writers_of_one_release_record_it_once(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        tenant = new_tenant(session)
        dataset = new_dataset(session, tenant, data="release race")
        job = reserve(session, tenant, dataset.id, 0.5, 1e-7, None, {}, iterations=2)

    def release(session: Session, index: int) -> tuple[Release, bool]:
        return record_release(
            session, job.id, 1, "votes", 0.1, sha256_of(str(index)), None, event=VOTES
        )

    outcomes = run_together(db_factory, THREADS, release)
    results = [o for o in outcomes if isinstance(o, tuple)]
    assert len(results) == THREADS, outcomes
    winners = [row for row, created in results if created]
    assert len(winners) == 1
    assert {(row.id, row.sha256) for row, _ in results} == {(winners[0].id, winners[0].sha256)}
    with db_factory() as session, read_transaction(session):
        count = session.scalar(select(func.count()).where(Release.job_id == job.id))
        spent = session.get_one(Job, job.id).epsilon_spent
    assert (count, spent) == (1, 0.1)


def test_a_cancel_racing_releases_charges_exactly_the_recorded_ones(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        tenant = new_tenant(session)
        dataset = new_dataset(session, tenant, data="cancel race")
        job = reserve(session, tenant, dataset.id, 1.0, 1e-7, None, {}, iterations=THREADS)

    def release_or_cancel(session: Session, index: int) -> object:
        if index == 0:
            return cancel(session, tenant, job.id)
        return record_release(
            session, job.id, index, "votes", 0.125, sha256_of("v"), None, event=VOTES
        )

    outcomes = run_together(db_factory, THREADS, release_or_cancel)
    recorded = [o for o in outcomes[1:] if isinstance(o, tuple)]
    assert all(isinstance(o, tuple | JobFinished) for o in outcomes[1:]), outcomes
    canceled = outcomes[0]
    assert isinstance(canceled, Job) and canceled.status == "canceled"
    with db_factory() as session, read_transaction(session):
        rows = session.scalars(select(Release).where(Release.job_id == job.id)).all()
    assert len(rows) == len(recorded)
    # A release recorded before the cancel makes the job pay all it reserved; none, nothing.
    assert canceled.epsilon_charged == (1.0 if recorded else 0.0)
    assert canceled.delta_charged == (1e-7 if recorded else 0.0)


def test_concurrent_sweeps_replace_a_dead_workers_message_once(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        tenant = new_tenant(session)
        dataset = new_dataset(session, tenant, data="sweep race")
        job = reserve(session, tenant, dataset.id, 0.5, 1e-7, None, {}, iterations=2)
        mark_sent(session, claim_outgoing(session, job_id=job.id)[0])
        update_progress(session, job.id, iteration=0, phase="starting")
        silence(session, job.id, 7200)
        (watched,) = [
            w
            for w in messages_to_check(session, waited_s=60, stale_after_s=3600, limit=10_000)
            if w.job_id == job.id
        ]

    def sweep(session: Session, _index: int) -> Outgoing | None:
        return replace_message(session, watched, reason="worker lost", stale_after_s=3600)

    outcomes = run_together(db_factory, THREADS, sweep)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert [o.task_id for o in outcomes if isinstance(o, Outgoing)] == [f"{job.id}.2"]
