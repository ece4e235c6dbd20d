"""Job leases in the database, on SQLite and PostgreSQL: one holder at a time, taken over when
the holder released it, went silent or is gone, and a holder taken over learns it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from service.db import (
    Job,
    beat,
    read_transaction,
    release_lease,
    reserve,
    take_lease,
    update_progress,
)
from service.db.models import utcnow
from tests.service.db.support import new_dataset, new_tenant, run_together, silence

THREADS = 8
STALE_S = 60.0


def new_job(session: Session) -> str:
    tenant = new_tenant(session)
    dataset = new_dataset(session, tenant, epsilon_cap=10.0)
    return reserve(session, tenant, dataset.id, 1.0, 1e-6, None, {}, iterations=2).id


def take(session: Session, job_id: str, holder: str, gone: frozenset[str] = frozenset()) -> bool:
    stale_before = utcnow() - timedelta(seconds=STALE_S)
    return take_lease(session, job_id, holder, stale_before=stale_before, gone=gone.__contains__)


def test_one_of_many_deliveries_takes_the_job(db_factory: sessionmaker[Session]) -> None:
    with db_factory() as session:
        job_id = new_job(session)
    outcomes = run_together(
        db_factory, THREADS, lambda session, index: take(session, job_id, f"worker-{index}")
    )
    assert outcomes.count(True) == 1 and outcomes.count(False) == THREADS - 1, outcomes


def test_a_lease_is_taken_over_only_when_its_holder_released_it_went_silent_or_is_gone(
    db_session: Session,
) -> None:
    job_id = new_job(db_session)
    assert take(db_session, job_id, "a")
    assert take(db_session, job_id, "a")  # its own delivery again (a retry in the process)
    assert not take(db_session, job_id, "b")
    release_lease(db_session, job_id, "b")  # not b's to release
    assert not take(db_session, job_id, "b")
    release_lease(db_session, job_id, "a")
    assert take(db_session, job_id, "b")
    assert take(db_session, job_id, "c", gone=frozenset({"b"}))  # b's process has exited
    silence(db_session, job_id, STALE_S + 1)
    assert take(db_session, job_id, "d")  # c stopped beating


def test_a_holder_that_was_taken_over_learns_it_at_its_next_beat(db_session: Session) -> None:
    job_id = new_job(db_session)
    assert take(db_session, job_id, "a")
    update_progress(db_session, job_id, iteration=0, phase="starting")
    silence(db_session, job_id, 10.0)
    assert beat(db_session, job_id, "a")
    with read_transaction(db_session):
        renewed = db_session.get_one(Job, job_id).heartbeat_at
    assert renewed is not None and renewed > utcnow() - timedelta(seconds=5)
    silence(db_session, job_id, STALE_S + 1)  # a database outage: a's heartbeat went stale
    assert take(db_session, job_id, "b")
    assert not beat(db_session, job_id, "a")
    assert beat(db_session, job_id, "b")
