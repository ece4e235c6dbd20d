"""Budgets follow records: uploads sharing any record share one budget (SQLite and PostgreSQL).

The digests here are stand-ins (sha256 of a record's name); ``tests/service/test_digests.py``
checks the real ones, and ``tests/service/test_api.py`` the whole path from a file.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import (
    Budget,
    BudgetCapConflict,
    BudgetExceeded,
    Dataset,
    Job,
    NotFound,
    RecordDigest,
    WrongRole,
    delete_dataset,
    finalize,
    read_transaction,
    record_release,
    remaining,
    reserve,
    shared_records,
    write_transaction,
)
from tests.service.db.support import (
    VOTES,
    new_dataset,
    new_tenant,
    run_together,
    sha256_of,
)

DELTA = 1e-6


def records(name: str, count: int, start: int = 0) -> list[str]:
    return [f"{name}-{i}" for i in range(start, start + count)]


def count(session: Session, model: type, *where) -> int:
    with read_transaction(session):
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_uploads_sharing_a_record_share_a_budget_and_disjoint_ones_do_not(
    db_session: Session,
) -> None:
    tenant = new_tenant(db_session)
    first = new_dataset(db_session, tenant, data="a", records=records("r", 60))
    reserve(db_session, tenant, first.id, 0.7, DELTA, None, {}, iterations=1)
    # Other bytes, one record in common: the same budget, with what was spent of it.
    overlapping = new_dataset(
        db_session, tenant, data="b", records=[*records("r", 1, 59), *records("new", 20)]
    )
    assert overlapping.budget_id == first.budget_id
    assert remaining(db_session, tenant, overlapping.id).epsilon_remaining == pytest.approx(0.3)
    with pytest.raises(BudgetExceeded):
        reserve(db_session, tenant, overlapping.id, 0.5, DELTA, None, {}, iterations=1)
    disjoint = new_dataset(db_session, tenant, data="c", records=records("other", 60))
    assert disjoint.budget_id != first.budget_id
    assert remaining(db_session, tenant, disjoint.id).epsilon_remaining == 1.0


def test_a_bridging_upload_merges_budgets_summing_their_spending_under_the_smallest_caps(
    db_session: Session,
) -> None:
    tenant = new_tenant(db_session)
    left = new_dataset(db_session, tenant, data="left", records=records("l", 10), epsilon_cap=3.0)
    right = new_dataset(db_session, tenant, data="right", records=records("r", 10), epsilon_cap=2.0)
    assert left.budget_id != right.budget_id
    job = reserve(db_session, tenant, left.id, 0.4, DELTA, None, {}, iterations=1)
    record_release(db_session, job.id, 1, "votes", 0.1, sha256_of("v"), None, event=VOTES)
    finalize(db_session, job.id, "succeeded")
    reserve(db_session, tenant, right.id, 0.5, DELTA, None, {}, iterations=1)
    budgets_before = count(db_session, Budget, Budget.tenant_id == tenant)

    bridge = new_dataset(
        db_session,
        tenant,
        data="bridge",
        records=[*records("l", 1), *records("r", 1)],
        epsilon_cap=1.5,
    )
    statuses = {d.id: remaining(db_session, tenant, d.id) for d in (left, right, bridge)}
    assert len(set(statuses.values())) == 1
    status = statuses[bridge.id]
    assert (status.epsilon_cap, status.epsilon_spent, status.epsilon_reserved) == (1.5, 0.4, 0.5)
    assert status.epsilon_remaining == pytest.approx(0.6)
    assert status.active_jobs == 1
    assert bridge.budget_id == left.budget_id  # the oldest budget's id stays
    assert count(db_session, Budget, Budget.tenant_id == tenant) == budgets_before - 1
    with read_transaction(db_session):
        assert db_session.get_one(Dataset, right.id).budget_id == left.budget_id


def test_an_upload_cannot_raise_the_cap_of_records_it_shares(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    first = new_dataset(db_session, tenant, data="a", records=records("r", 5), delta_cap=1e-6)
    datasets_before = count(db_session, Dataset, Dataset.tenant_id == tenant)
    digests_before = count(db_session, RecordDigest, RecordDigest.tenant_id == tenant)
    for caps in ({"epsilon_cap": 2.0, "delta_cap": 1e-6}, {"epsilon_cap": 1.0, "delta_cap": 1e-5}):
        with pytest.raises(
            BudgetCapConflict,
            match=r"cap of epsilon 1, delta 1e-06; .* epsilon_cap <= 1 and delta_cap <= 1e-06",
        ):
            new_dataset(db_session, tenant, data="b", records=records("r", 2), **caps)
    assert count(db_session, Dataset, Dataset.tenant_id == tenant) == datasets_before
    assert count(db_session, RecordDigest, RecordDigest.tenant_id == tenant) == digests_before
    # A smaller cap is taken, for every dataset of the budget.
    lower = new_dataset(
        db_session, tenant, data="c", records=records("r", 2), epsilon_cap=0.5, delta_cap=1e-7
    )
    for dataset in (first, lower):
        status = remaining(db_session, tenant, dataset.id)
        assert (status.epsilon_cap, status.delta_cap) == (0.5, 1e-7)


def test_a_deleted_datasets_records_keep_its_budget(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    gone = new_dataset(db_session, tenant, data="a", records=records("r", 30))
    reserve(db_session, tenant, gone.id, 0.9, DELTA, None, {}, iterations=1)
    delete_dataset(db_session, tenant, gone.id)
    assert count(db_session, RecordDigest, RecordDigest.dataset_id == gone.id) == 30
    again = new_dataset(db_session, tenant, data="a reordered", records=records("r", 30)[::-1])
    assert again.budget_id == gone.budget_id
    assert remaining(db_session, tenant, again.id).epsilon_remaining == pytest.approx(0.1)


def test_the_same_bytes_without_record_digests_share_a_budget(db_session: Session) -> None:
    """Datasets uploaded before record digests existed have none: their bytes still match."""
    tenant = new_tenant(db_session)
    legacy = new_dataset(db_session, tenant, data="old upload")
    reserve(db_session, tenant, legacy.id, 0.6, DELTA, None, {}, iterations=1)
    again = new_dataset(db_session, tenant, data="old upload", records=records("r", 10))
    assert again.budget_id == legacy.budget_id
    assert remaining(db_session, tenant, again.id).epsilon_remaining == pytest.approx(0.4)


def test_record_digests_are_never_compared_across_tenants(db_session: Session) -> None:
    # Equal digests under two tenants cannot happen with per-tenant keys; even so, one tenant's
    # digests must never reach another's budget.
    tenant, other = new_tenant(db_session), new_tenant(db_session, "other")
    mine = new_dataset(db_session, tenant, data="a", records=records("r", 10))
    reserve(db_session, tenant, mine.id, 1.0, DELTA, None, {}, iterations=1)
    theirs = new_dataset(db_session, other, data="a", records=records("r", 10), epsilon_cap=5.0)
    assert theirs.budget_id != mine.budget_id
    assert remaining(db_session, other, theirs.id).epsilon_remaining == 5.0


def test_concurrent_overlapping_uploads_end_in_one_budget(
    db_factory: sessionmaker[Session],
) -> None:
    threads = 6
    with db_factory() as session:
        tenant = new_tenant(session)

    def upload(session: Session, index: int) -> Dataset:
        # Upload i holds records i and i + 1 of a chain: together they link every upload.
        return new_dataset(
            session, tenant, data=f"chain {index}", records=records("chain", 2, start=index)
        )

    outcomes = run_together(db_factory, threads, upload)
    assert all(isinstance(o, Dataset) for o in outcomes), outcomes
    with db_factory() as session, read_transaction(session):
        budgets = session.scalars(
            select(Dataset.budget_id).where(Dataset.tenant_id == tenant).distinct()
        ).all()
        assert len(budgets) == 1
        assert (
            session.scalar(
                select(func.count()).select_from(Budget).where(Budget.tenant_id == tenant)
            )
            == 1
        )

    def create(session: Session, index: int) -> Job:
        dataset = outcomes[index]
        assert isinstance(dataset, Dataset)
        return reserve(session, tenant, dataset.id, 0.4, DELTA, None, {}, iterations=1)

    created = run_together(db_factory, threads, create)
    assert sum(isinstance(o, Job) for o in created) == 2, created


def test_record_level_and_user_level_data_never_share_a_budget(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    by_record = new_dataset(db_session, tenant, data="scans", records=records("r", 20))
    reserve(db_session, tenant, by_record.id, 0.8, DELTA, None, {}, iterations=1)
    # The same bytes and records, uploaded with a user column: a budget of its own.
    by_user = new_dataset(
        db_session, tenant, data="scans", records=records("r", 20), user_column="patient"
    )
    assert (by_record.privacy_unit, by_user.privacy_unit) == ("record", "user")
    assert by_user.budget_id != by_record.budget_id
    assert remaining(db_session, tenant, by_user.id).epsilon_remaining == 1.0
    reserve(db_session, tenant, by_user.id, 0.5, DELTA, None, {}, iterations=1)
    assert remaining(db_session, tenant, by_record.id).epsilon_remaining == pytest.approx(0.2)
    # A user-level upload sharing records joins the user-level budget only, and a record-level
    # one bridging both of them joins (and merges) record-level budgets only.
    more_users = new_dataset(
        db_session, tenant, data="more", records=records("r", 5), user_column="patient"
    )
    assert more_users.budget_id == by_user.budget_id
    assert remaining(db_session, tenant, more_users.id).epsilon_remaining == pytest.approx(0.5)
    other_records = new_dataset(db_session, tenant, data="other", records=records("o", 5))
    bridge = new_dataset(
        db_session, tenant, data="bridge", records=[*records("r", 1), *records("o", 1)]
    )
    assert bridge.budget_id == by_record.budget_id
    with read_transaction(db_session):
        assert db_session.get_one(Dataset, other_records.id).budget_id == by_record.budget_id
        units = dict(
            db_session.execute(
                select(Budget.id, Budget.privacy_unit).where(Budget.tenant_id == tenant)
            ).all()
        )
    assert units == {by_record.budget_id: "record", by_user.budget_id: "user"}
    assert remaining(db_session, tenant, by_user.id).epsilon_remaining == pytest.approx(0.5)


def test_the_database_holds_a_dataset_to_a_budget_of_its_unit(db_session: Session) -> None:
    """A bug in a query cannot put user-level data on a record-level budget, nor make a
    dataset user-level without its user column."""
    tenant = new_tenant(db_session)
    by_record = new_dataset(db_session, tenant, data="a", records=records("r", 3))
    by_user = new_dataset(db_session, tenant, data="b", records=records("u", 3), user_column="user")
    for change in (
        {"budget_id": by_record.budget_id},  # user-level data on a record-level budget
        {"user_column": None},  # user-level without the users
    ):
        with pytest.raises(IntegrityError), write_transaction(db_session):
            db_session.execute(update(Dataset).where(Dataset.id == by_user.id).values(**change))
    with pytest.raises(IntegrityError), write_transaction(db_session):
        db_session.execute(
            update(Dataset).where(Dataset.id == by_record.id).values(user_column="user")
        )


def test_held_out_data_has_no_budget_is_never_spent_on_and_never_joins_a_budget(
    db_session: Session,
) -> None:
    tenant = new_tenant(db_session)
    private = new_dataset(db_session, tenant, data="a", records=records("r", 20))
    reserve(db_session, tenant, private.id, 0.6, DELTA, None, {}, iterations=1)
    # 5 of its records are private ones: it still joins nothing, having no budget.
    heldout = new_dataset(
        db_session,
        tenant,
        data="h",
        records=[*records("r", 5, 15), *records("h", 10)],
        role="heldout",
    )
    assert (heldout.role, heldout.budget_id) == ("heldout", None)
    with pytest.raises(NotFound, match="held-out evaluation data: it has no privacy budget"):
        remaining(db_session, tenant, heldout.id)
    jobs_before = count(db_session, Job)
    with pytest.raises(WrongRole, match="never a job's private input"):
        reserve(db_session, tenant, heldout.id, 0.1, DELTA, None, {}, iterations=1)
    assert count(db_session, Job) == jobs_before
    # Private uploads sharing records (or bytes) with the held-out data only: budgets of
    # their own, as if it did not exist.
    for data in ("b", "h"):
        fresh = new_dataset(db_session, tenant, data=data, records=records("h", 3))
        assert fresh.budget_id not in (None, private.budget_id)
        assert remaining(db_session, tenant, fresh.id).epsilon_remaining == 1.0
    assert remaining(db_session, tenant, private.id).epsilon_remaining == pytest.approx(0.4)
    # Its digests are kept to decide overlap with private data, within its tenant only.
    assert shared_records(db_session, tenant, private.id, heldout.id) == 5
    assert shared_records(db_session, tenant, heldout.id, private.id) == 5
    other = new_tenant(db_session, "globex")
    assert shared_records(db_session, other, private.id, heldout.id) == 0
    same_bytes = new_dataset(db_session, tenant, data="h", records=None, role="heldout")
    assert shared_records(db_session, tenant, heldout.id, same_bytes.id) == 600


def test_the_database_holds_held_out_data_without_a_budget(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    private = new_dataset(db_session, tenant, data="a", records=records("r", 3))
    heldout = new_dataset(db_session, tenant, data="h", records=records("h", 3), role="heldout")
    for dataset, change in (
        (heldout, {"budget_id": private.budget_id}),  # held-out data on a budget
        (private, {"budget_id": None}),  # private data without one
        (private, {"role": "public"}),
    ):
        with pytest.raises(IntegrityError), write_transaction(db_session):
            db_session.execute(update(Dataset).where(Dataset.id == dataset.id).values(**change))
