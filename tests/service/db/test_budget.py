"""Reservations, releases and charges against a dataset's privacy budget (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from sqlalchemy.orm import Session

from service.db import (
    BudgetCapConflict,
    BudgetExceeded,
    IdempotencyConflict,
    JobFinished,
    ReleaseConflict,
    ReservationExceeded,
    cancel,
    delete_dataset,
    finalize,
    get_job,
    list_events,
    record_release,
    remaining,
    reserve,
)
from tests.service.db.support import VOTES, new_dataset, new_tenant, sha256_of

DELTA = 1e-6


def test_reservation_fits_then_is_refused_naming_what_is_left(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant, epsilon_cap=1.0, delta_cap=1e-5)
    job = reserve(db_session, tenant, dataset.id, 0.6, DELTA, None, {"T": 3}, iterations=3)
    assert (job.status, job.iteration, job.iterations) == ("queued", 0, 3)
    assert (job.epsilon_reserved, job.delta_reserved) == (0.6, DELTA)
    expected = (
        f"job needs epsilon 0.5, delta 1e-06 but dataset {dataset.id} has epsilon 0.4, "
        "delta 9e-06 left of cap epsilon 1, delta 1e-05"
    )
    with pytest.raises(BudgetExceeded, match=re.escape(expected)) as refused:
        reserve(db_session, tenant, dataset.id, 0.5, DELTA, None, {}, iterations=3)
    assert refused.value.epsilon_remaining == pytest.approx(0.4)
    with pytest.raises(BudgetExceeded, match="delta 1e-05 but"):
        reserve(db_session, tenant, dataset.id, 0.1, 1e-5, None, {}, iterations=3)
    status = remaining(db_session, tenant, dataset.id)
    assert status.epsilon_remaining == pytest.approx(0.4)
    assert status.delta_remaining == pytest.approx(9e-6)
    assert (status.epsilon_reserved, status.epsilon_spent, status.active_jobs) == (0.6, 0.0, 1)


def test_budget_fills_exactly_despite_rounding(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant, epsilon_cap=1.2)
    for _ in range(3):  # 0.4 + 0.4 + 0.4 == 1.2000000000000002 in doubles
        reserve(db_session, tenant, dataset.id, 0.4, DELTA, None, {}, iterations=1)
    with pytest.raises(BudgetExceeded, match="has epsilon 0, "):
        reserve(db_session, tenant, dataset.id, 1e-6, DELTA, None, {}, iterations=1)


def test_reupload_of_the_same_data_shares_its_budget(db_session: Session) -> None:
    tenant, other = new_tenant(db_session), new_tenant(db_session, "other")
    first = new_dataset(db_session, tenant, data="same bytes")
    reserve(db_session, tenant, first.id, 0.7, DELTA, None, {}, iterations=1)
    delete_dataset(db_session, tenant, first.id)
    second = new_dataset(db_session, tenant, data="same bytes")
    assert second.id != first.id and second.sha256 == first.sha256
    assert remaining(db_session, tenant, second.id).epsilon_remaining == pytest.approx(0.3)
    with pytest.raises(BudgetExceeded):
        reserve(db_session, tenant, second.id, 0.7, DELTA, None, {}, iterations=1)
    with pytest.raises(BudgetCapConflict, match="cap of epsilon 1, delta 1e-05"):
        new_dataset(db_session, tenant, data="same bytes", epsilon_cap=5.0)
    # The same bytes uploaded by another tenant have a budget of their own.
    theirs = new_dataset(db_session, other, data="same bytes")
    assert remaining(db_session, other, theirs.id).epsilon_remaining == 1.0


def test_idempotency_key_returns_the_same_job(db_session: Session) -> None:
    tenant, other = new_tenant(db_session), new_tenant(db_session, "other")
    dataset = new_dataset(db_session, tenant)
    spec = {"iterations": 2, "sigma": [1.5, 2.0]}
    job = reserve(db_session, tenant, dataset.id, 0.5, DELTA, "key-1", spec, iterations=2)
    again = reserve(db_session, tenant, dataset.id, 0.5, DELTA, "key-1", spec, iterations=2)
    assert again.id == job.id
    assert remaining(db_session, tenant, dataset.id).epsilon_reserved == 0.5
    with pytest.raises(IdempotencyConflict, match=job.id):
        reserve(db_session, tenant, dataset.id, 0.4, DELTA, "key-1", spec, iterations=2)
    with pytest.raises(IdempotencyConflict):
        reserve(db_session, tenant, dataset.id, 0.5, DELTA, "key-1", {"other": 1}, iterations=2)
    # Keys are per tenant: another tenant's "key-1" is another job.
    theirs = new_dataset(db_session, other)
    their_job = reserve(db_session, other, theirs.id, 0.5, DELTA, "key-1", spec, iterations=2)
    assert their_job.id != job.id
    # A retry after the dataset was deleted still gets its job back.
    delete_dataset(db_session, tenant, dataset.id)
    assert reserve(db_session, tenant, dataset.id, 0.5, DELTA, "key-1", spec, iterations=2).id == (
        job.id
    )


def test_reserve_validates_its_request(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    for epsilon, delta, iterations in [(0.0, DELTA, 1), (float("inf"), DELTA, 1), (0.1, 0.0, 1)]:
        with pytest.raises(ValueError):
            reserve(db_session, tenant, dataset.id, epsilon, delta, None, {}, iterations=iterations)
    with pytest.raises(ValueError, match="iterations"):
        reserve(db_session, tenant, dataset.id, 0.1, DELTA, None, {}, iterations=0)


def test_finalize_charges_the_whole_reservation_of_a_job_that_released(
    db_session: Session,
) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.8, DELTA, None, {}, iterations=3)
    record_release(db_session, job.id, 1, "votes", 0.25, sha256_of("v1"), "r/1.npz", event=VOTES)
    record_release(db_session, job.id, 2, "votes", 0.125, sha256_of("v2"), "r/2.npz", event=VOTES)
    running = remaining(db_session, tenant, dataset.id)
    assert (running.epsilon_spent, running.epsilon_reserved) == (0.375, 0.8 - 0.375)
    assert (running.delta_spent, running.delta_reserved) == (DELTA, 0.0)
    assert running.epsilon_remaining == pytest.approx(0.2)

    done = finalize(db_session, job.id, "succeeded")
    assert (done.status, done.epsilon_charged, done.delta_charged) == ("succeeded", 0.8, DELTA)
    assert done.epsilon_spent == 0.375  # what the releases metered, for the record
    assert done.finished_at is not None and done.started_at is not None
    after = remaining(db_session, tenant, dataset.id)
    assert (after.epsilon_spent, after.epsilon_remaining) == (0.8, pytest.approx(0.2))
    assert (after.epsilon_reserved, after.active_jobs) == (0.0, 0)
    # Idempotent: the first final state wins and nothing is charged twice.
    again = finalize(db_session, job.id, "failed", "late failure report")
    assert (again.status, again.error, again.epsilon_charged) == ("succeeded", None, 0.8)
    assert remaining(db_session, tenant, dataset.id) == after
    finished = [e for e in list_events(db_session, tenant, job.id).events if e.kind == "finished"]
    assert len(finished) == 1
    assert finished[0].payload["epsilon_refunded"] == 0.0


def test_a_job_that_released_nothing_is_charged_nothing(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 1.0, 1e-5, None, {}, iterations=1)
    failed = finalize(db_session, job.id, "failed", "generator crashed")
    assert (failed.epsilon_charged, failed.delta_charged, failed.error) == (
        0.0,
        0.0,
        "generator crashed",
    )
    status = remaining(db_session, tenant, dataset.id)
    assert (status.epsilon_remaining, status.delta_remaining) == (1.0, 1e-5)


def test_a_release_is_recorded_once_and_returned_to_later_writers(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, DELTA, None, {}, iterations=2)
    first, created = record_release(
        db_session, job.id, 1, "votes", 0.2, sha256_of("a"), "a", event=VOTES
    )
    assert created
    again, created = record_release(
        db_session, job.id, 1, "votes", 0.2, sha256_of("b"), "b", event=VOTES
    )
    assert not created
    assert (again.id, again.sha256, again.storage_path) == (first.id, sha256_of("a"), "a")
    assert get_job(db_session, tenant, job.id).epsilon_spent == 0.2
    with pytest.raises(ReleaseConflict, match=re.escape("recorded with epsilon 0.2,")):
        record_release(db_session, job.id, 1, "votes", 0.3, sha256_of("a"), "a", event=VOTES)
    _, created = record_release(
        db_session, job.id, 1, "label_counts", 0.1, sha256_of("c"), None, event=VOTES
    )
    assert created


def test_a_release_keeps_its_dp_event_and_refuses_another(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, DELTA, None, {}, iterations=2)
    record_release(db_session, job.id, 1, "votes", 0.2, sha256_of("a"), None, event=VOTES)
    again, created = record_release(
        db_session, job.id, 1, "votes", 0.2, sha256_of("a"), None, event=VOTES
    )
    assert not created
    assert again.event == {
        "mechanism": "discrete_gaussian",
        "sigma": 2.0,
        "sensitivity": 1,
        "count": 1,
        "description": "votes",
    }
    with pytest.raises(ReleaseConflict, match="recorded with DP event"):
        record_release(
            db_session,
            job.id,
            1,
            "votes",
            0.2,
            sha256_of("a"),
            None,
            event=replace(VOTES, sigma=3.0),
        )


def test_releases_cannot_exceed_the_reservation(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.3, DELTA, None, {}, iterations=3)
    for iteration in (1, 2, 3):  # 0.1 three times sums to 0.30000000000000004: still fits
        record_release(
            db_session, job.id, iteration, "votes", 0.1, sha256_of("x"), None, event=VOTES
        )
    with pytest.raises(ReservationExceeded, match=re.escape("above the 0.3 it reserved")):
        record_release(db_session, job.id, 4, "votes", 0.01, sha256_of("x"), None, event=VOTES)
    assert finalize(db_session, job.id, "succeeded").epsilon_charged == 0.3


def test_no_release_is_recorded_after_the_job_ends(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, DELTA, None, {}, iterations=2)
    record_release(db_session, job.id, 1, "votes", 0.2, sha256_of("v"), None, event=VOTES)
    canceled = cancel(db_session, tenant, job.id)
    assert (canceled.status, canceled.epsilon_charged) == ("canceled", 0.5)
    with pytest.raises(JobFinished, match="canceled"):
        record_release(db_session, job.id, 2, "votes", 0.2, sha256_of("w"), None, event=VOTES)
    # A redelivered task asking for a release made before the cancel still gets it back.
    _, created = record_release(
        db_session, job.id, 1, "votes", 0.2, sha256_of("v"), None, event=VOTES
    )
    assert not created
    assert remaining(db_session, tenant, dataset.id).epsilon_remaining == pytest.approx(0.5)


def test_record_release_validates_its_arguments(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, DELTA, None, {}, iterations=2)
    bad = [
        (-1, "votes", 0.1, sha256_of("v")),
        (1, "", 0.1, sha256_of("v")),
        (1, "votes", -0.1, sha256_of("v")),
        (1, "votes", float("nan"), sha256_of("v")),
        (1, "votes", 0.1, "ABC"),
    ]
    for iteration, mechanism, epsilon, digest in bad:
        with pytest.raises(ValueError):
            record_release(
                db_session, job.id, iteration, mechanism, epsilon, digest, None, event=VOTES
            )
    with pytest.raises(ValueError, match="final status"):
        finalize(db_session, job.id, "running")


def test_a_job_that_made_any_release_pays_its_whole_reservation(db_session: Session) -> None:
    """Hole 4 of "Privacy II": stopping early after watching the results refunds nothing."""
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    watched = reserve(db_session, tenant, dataset.id, 0.5, DELTA, None, {}, iterations=4)
    record_release(db_session, watched.id, 1, "votes", 0.1, sha256_of("v"), None, event=VOTES)
    canceled = cancel(db_session, tenant, watched.id)
    assert (canceled.epsilon_charged, canceled.delta_charged) == (0.5, DELTA)
    timed_out = reserve(db_session, tenant, dataset.id, 0.3, DELTA, None, {}, iterations=4)
    record_release(db_session, timed_out.id, 1, "votes", 0.1, sha256_of("w"), None, event=VOTES)
    failed = finalize(db_session, timed_out.id, "failed", "time limit")
    assert (failed.epsilon_charged, failed.delta_charged) == (0.3, DELTA)
    status = remaining(db_session, tenant, dataset.id)
    assert (status.epsilon_spent, status.delta_spent) == (pytest.approx(0.8), 2 * DELTA)
    assert status.epsilon_remaining == pytest.approx(0.2)
    (finished,) = [e for e in list_events(db_session, tenant, canceled.id).events
                   if e.kind == "finished"]  # fmt: skip
    assert (finished.payload["epsilon_refunded"], finished.payload["delta_refunded"]) == (0, 0)
