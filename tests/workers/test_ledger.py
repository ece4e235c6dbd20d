"""The database release ledger: exactly-once releases, epsilons, events, and losing deliveries.

Runs on SQLite and on PostgreSQL (the service's database fixtures).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pe_core.privacy import (
    DpEvent,
    DuplicateReleaseError,
    JsonlLedger,
    Ledger,
    LedgerEntry,
    LedgerError,
    ReleaseStore,
    epsilon_for,
    release_digest,
)
from service.db import (
    Job,
    JobFinished,
    Release,
    cancel,
    read_transaction,
    reserve,
    write_transaction,
)
from tests.service.db.support import new_dataset, new_tenant
from workers.ledger import DbLedger

DELTA = 1e-5
PREFIX = "datasets/ds/jobs/job/state/releases"


def histogram(t: int, sigma: float = 2.0, k: int = 1) -> DpEvent:
    return DpEvent("discrete_gaussian", sigma=sigma, count=k, description=f"iteration-{t}")


def never() -> np.ndarray:
    raise AssertionError("a recorded release was drawn again")


class LookedTooEarly(DbLedger):
    """A delivery's ledger as it looked before another delivery recorded the key."""

    def get(self, key: str) -> LedgerEntry | None:
        return None


@pytest.fixture
def job(db_factory: sessionmaker[Session]) -> tuple[str, str]:
    """(tenant id, job id) of a queued job reserving epsilon 8 at delta 1e-5."""
    with db_factory() as session:
        tenant = new_tenant(session)
        dataset = new_dataset(session, tenant, epsilon_cap=10.0, delta_cap=1e-3)
        job = reserve(session, tenant, dataset.id, 8.0, DELTA, None, {}, iterations=3)
    return tenant, job.id


def ledger_for(factory: sessionmaker[Session], job_id: str, directory: Path) -> DbLedger:
    return DbLedger(factory, job_id, delta=DELTA, directory=directory, key_prefix=PREFIX)


def rows(factory: sessionmaker[Session], job_id: str) -> list[Release]:
    statement = select(Release).where(Release.job_id == job_id).order_by(Release.id)
    with factory() as session, read_transaction(session):
        return list(session.scalars(statement))


def test_is_a_ledger(db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path):
    assert isinstance(ledger_for(db_factory, job[1], tmp_path), Ledger)


def test_each_key_is_released_once_and_rebuilt_from_the_database(
    db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path
) -> None:
    store = ReleaseStore(ledger_for(db_factory, job[1], tmp_path), tmp_path)
    first = store.release("iteration-1/histogram", 1, histogram(1), lambda: np.array([3, -1, 7]))
    again = ReleaseStore(ledger_for(db_factory, job[1], tmp_path), tmp_path).release(
        "iteration-1/histogram", 1, histogram(1), never
    )
    np.testing.assert_array_equal(again, first)
    (entry,) = ledger_for(db_factory, job[1], tmp_path).entries()
    assert entry.key == "iteration-1/histogram"
    assert entry.iteration == 1
    assert entry.event == histogram(1)
    assert entry.release_sha256 == release_digest(np.array([3, -1, 7]))
    (row,) = rows(db_factory, job[1])
    assert row.mechanism == entry.key
    assert row.storage_path == f"{PREFIX}/{entry.release_path}"
    assert row.event == {
        "mechanism": "discrete_gaussian",
        "sigma": 2.0,
        "sensitivity": 1,
        "count": 1,
        "description": "iteration-1",
    }


def test_release_epsilons_sum_to_the_accountants_epsilon(
    db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path
) -> None:
    store = ReleaseStore(ledger_for(db_factory, job[1], tmp_path), tmp_path)
    events = [
        DpEvent("discrete_gaussian", sigma=3.0, description="label-counts"),
        histogram(1, sigma=3.0, k=2),
        histogram(2, sigma=3.0, k=2),
    ]
    for t, event in enumerate(events):
        store.release(event.description, t, event, lambda: np.arange(4))
        recorded = rows(db_factory, job[1])
        assert len(recorded) == t + 1
        assert math.isclose(
            sum(row.epsilon for row in recorded), epsilon_for(events[: t + 1], DELTA), rel_tol=1e-9
        )
    assert all(row.epsilon > 0 for row in recorded)
    with db_factory() as session, read_transaction(session):
        spent = session.get_one(Job, job[1]).epsilon_spent
    assert math.isclose(spent, epsilon_for(events, DELTA), rel_tol=1e-9)


def test_a_delivery_that_loses_the_insert_uses_the_recorded_release(
    db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path
) -> None:
    key, event = "iteration-1/histogram", histogram(1)
    winner = ReleaseStore(ledger_for(db_factory, job[1], tmp_path / "state"), tmp_path / "state")
    recorded = winner.release(key, 1, event, lambda: np.array([5, 5, 5]))
    # The loser drew before the winner recorded, and its file replaced the winner's.
    elsewhere = tmp_path / "elsewhere"
    ReleaseStore(JsonlLedger(tmp_path / "other.jsonl"), elsewhere).release(
        key, 1, event, lambda: np.array([9, 0, 1])
    )
    (drawn,) = elsewhere.glob("*.npz")
    shutil.copyfile(drawn, tmp_path / "state" / drawn.name)

    state = tmp_path / "state"
    loser = ReleaseStore(
        LookedTooEarly(db_factory, job[1], delta=DELTA, directory=state, key_prefix=PREFIX), state
    )
    with pytest.raises(DuplicateReleaseError, match="resume"):
        loser.release(key, 1, event, never)
    resumed = ReleaseStore(ledger_for(db_factory, job[1], tmp_path / "state"), tmp_path / "state")
    np.testing.assert_array_equal(resumed.release(key, 1, event, never), recorded)
    (row,) = rows(db_factory, job[1])
    assert row.sha256 == release_digest(recorded)


def test_a_delivery_that_finds_the_winners_file_records_nothing_new(
    db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path
) -> None:
    key, event = "iteration-1/histogram", histogram(1)
    winner = ReleaseStore(ledger_for(db_factory, job[1], tmp_path), tmp_path)
    recorded = winner.release(key, 1, event, lambda: np.array([2, 4]))

    late = ReleaseStore(
        LookedTooEarly(db_factory, job[1], delta=DELTA, directory=tmp_path, key_prefix=PREFIX),
        tmp_path,
    )
    np.testing.assert_array_equal(late.release(key, 1, event, never), recorded)
    assert len(rows(db_factory, job[1])) == 1


def test_a_canceled_job_releases_nothing(
    db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path
) -> None:
    with db_factory() as session:
        cancel(session, *job)
    store = ReleaseStore(ledger_for(db_factory, job[1], tmp_path), tmp_path)
    with pytest.raises(JobFinished):
        store.release("iteration-1/histogram", 1, histogram(1), lambda: np.array([1]))
    assert rows(db_factory, job[1]) == []


def test_a_release_recorded_without_its_event_is_refused(
    db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path
) -> None:
    # A row as recorded before releases kept their event (migration 0002).
    legacy = Release(
        job_id=job[1], iteration=1, mechanism="iteration-1/histogram", epsilon=0.5, sha256="0" * 64
    )
    with db_factory() as session, write_transaction(session):
        session.add(legacy)
    with pytest.raises(LedgerError, match="without its DP event"):
        ledger_for(db_factory, job[1], tmp_path).entries()


def test_a_release_stored_outside_the_jobs_folder_is_refused(
    db_factory: sessionmaker[Session], job: tuple[str, str], tmp_path: Path
) -> None:
    ReleaseStore(ledger_for(db_factory, job[1], tmp_path), tmp_path).release(
        "iteration-1/histogram", 1, histogram(1), lambda: np.array([1])
    )
    other = DbLedger(
        db_factory, job[1], delta=DELTA, directory=tmp_path, key_prefix="datasets/other"
    )
    with pytest.raises(LedgerError, match="outside this job's release folder"):
        other.get("iteration-1/histogram")
