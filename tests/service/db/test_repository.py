"""Tenant scoping, API keys, progress and cursor-paged job events (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from service.db import (
    JobEvent,
    JobFinished,
    NotFound,
    append_event,
    cancel,
    create_api_key,
    delete_dataset,
    get_dataset,
    get_job,
    list_events,
    remaining,
    reserve,
    revoke_api_key,
    tenant_for_api_key,
    update_progress,
)
from service.security import hash_api_key
from tests.service.db.support import new_dataset, new_tenant


def test_another_tenants_resources_are_not_found(db_session: Session) -> None:
    owner, intruder = new_tenant(db_session, "owner"), new_tenant(db_session, "intruder")
    dataset = new_dataset(db_session, owner)
    job = reserve(db_session, owner, dataset.id, 0.5, 1e-6, None, {}, iterations=2)
    key, plain_key = create_api_key(db_session, owner)
    lookups = {
        "get_dataset": lambda: get_dataset(db_session, intruder, dataset.id),
        "delete_dataset": lambda: delete_dataset(db_session, intruder, dataset.id),
        "remaining": lambda: remaining(db_session, intruder, dataset.id),
        "reserve": lambda: reserve(
            db_session, intruder, dataset.id, 0.1, 1e-6, None, {}, iterations=1
        ),
        "get_job": lambda: get_job(db_session, intruder, job.id),
        "list_events": lambda: list_events(db_session, intruder, job.id),
        "cancel": lambda: cancel(db_session, intruder, job.id),
        "revoke_api_key": lambda: revoke_api_key(db_session, intruder, key.id),
    }
    for name, lookup in lookups.items():
        with pytest.raises(NotFound):
            lookup()
            pytest.fail(f"{name} found another tenant's resource")
    # Nothing was changed by the attempts.
    assert get_job(db_session, owner, job.id).status == "queued"
    assert get_dataset(db_session, owner, dataset.id).deleted_at is None
    assert tenant_for_api_key(db_session, plain_key) is not None


def test_deleted_datasets_are_not_found_but_keep_their_jobs(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, 1e-6, None, {}, iterations=2)
    deleted = delete_dataset(db_session, tenant, dataset.id)
    assert deleted.deleted_at is not None
    for lookup in (get_dataset, delete_dataset, remaining):
        with pytest.raises(NotFound):
            lookup(db_session, tenant, dataset.id)
    with pytest.raises(NotFound):
        reserve(db_session, tenant, dataset.id, 0.1, 1e-6, None, {}, iterations=1)
    assert get_job(db_session, tenant, job.id).dataset_id == dataset.id


def test_api_keys_are_stored_hashed_and_can_be_revoked(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    row, key = create_api_key(db_session, tenant, "ci")
    assert key.startswith(row.prefix) and len(row.prefix) < len(key)
    assert row.key_sha256 == hash_api_key(key) and key not in row.key_sha256
    found = tenant_for_api_key(db_session, key)
    assert found is not None and found.id == tenant
    assert tenant_for_api_key(db_session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    revoked = revoke_api_key(db_session, tenant, row.id)
    assert revoked.revoked_at is not None
    assert revoke_api_key(db_session, tenant, row.id).revoked_at == revoked.revoked_at
    assert tenant_for_api_key(db_session, key) is None


def test_progress_moves_the_job_and_stops_after_cancel(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, 1e-6, None, {}, iterations=3)
    running = update_progress(db_session, job.id, iteration=1, phase="vote")
    assert (running.status, running.iteration, running.phase) == ("running", 1, "vote")
    assert running.started_at is not None
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        update_progress(db_session, job.id, iteration=4, phase="vote")
    cancel(db_session, tenant, job.id)
    with pytest.raises(JobFinished, match="canceled"):
        update_progress(db_session, job.id, iteration=2, phase="vote")
    with pytest.raises(NotFound):
        update_progress(db_session, "job_missing", iteration=1, phase="vote")


def test_events_are_paged_by_an_increasing_cursor(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, 1e-6, None, {}, iterations=3)
    other = reserve(db_session, tenant, dataset.id, 0.1, 1e-6, None, {}, iterations=1)
    for step in range(6):
        append_event(db_session, job.id, "log", {"step": step})
        append_event(db_session, other.id, "log", {"step": -step})
    seen: list[JobEvent] = []
    after, pages = 0, 0
    while True:
        page = list_events(db_session, tenant, job.id, after=after, limit=3)
        seen += page.events
        pages += 1
        if page.next_after is None:
            break
        after = page.next_after
    assert pages == 3  # 7 events ("created" + 6 logs) in pages of 3, 3 and 1
    assert [e.kind for e in seen] == ["created"] + ["log"] * 6
    assert [e.payload.get("step") for e in seen[1:]] == list(range(6))
    # Each job numbers its own events 1, 2, 3...: the other job's events, interleaved with
    # these in the table, leave no gaps (a gap would tell of other jobs' activity).
    assert [e.seq for e in seen] == list(range(1, 8))
    assert all(e.job_id == job.id for e in seen)
    other_events = list_events(db_session, tenant, other.id, limit=100).events
    assert [e.seq for e in other_events] == list(range(1, 8))
    # Exactly a page's worth left: the page is full and the next one is empty.
    page = list_events(db_session, tenant, job.id, after=seen[-4].seq, limit=3)
    assert [e.seq for e in page.events] == [e.seq for e in seen[-3:]] and page.next_after is None
    with pytest.raises(ValueError, match="limit"):
        list_events(db_session, tenant, job.id, limit=0)
