"""The job outbox (SQLite and PostgreSQL): a message committed with each reservation, sent by
one deliverer at a time, and replaced only once, when a sweep proves it lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db import (
    Job,
    JobMessage,
    beat,
    cancel,
    list_events,
    read_transaction,
    reserve,
    take_lease,
    update_progress,
    write_transaction,
)
from service.db.models import utcnow
from service.db.outbox import (
    Outgoing,
    Watched,
    claim_outgoing,
    has_outgoing,
    mark_sent,
    messages_to_check,
    note_whereabouts,
    replace_message,
    unclaim,
)
from tests.service.db.support import new_dataset, new_tenant, run_together, silence

HOUR = 3600.0


def message_of(session: Session, job_id: str) -> JobMessage:
    with read_transaction(session):
        return session.scalars(select(JobMessage).where(JobMessage.job_id == job_id)).one()


def tenant_of(session: Session, job_id: str) -> str:
    with read_transaction(session):
        return session.get_one(Job, job_id).tenant_id


def new_job(session: Session, key: str | None = None) -> str:
    tenant = new_tenant(session)
    dataset = new_dataset(session, tenant, epsilon_cap=10.0)
    return reserve(session, tenant, dataset.id, 0.5, 1e-6, key, {}, iterations=3).id


def sent_long_ago(session: Session, job_id: str) -> None:
    with write_transaction(session):
        message = session.get_one(JobMessage, job_id)
        message.sent_at = utcnow() - timedelta(hours=2)


def test_a_reservation_commits_one_pending_message_and_a_retry_adds_none(
    db_session: Session,
) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    first = reserve(db_session, tenant, dataset.id, 0.5, 1e-6, "K", {}, iterations=3)
    again = reserve(db_session, tenant, dataset.id, 0.5, 1e-6, "K", {}, iterations=3)
    assert again.id == first.id
    message = message_of(db_session, first.id)
    assert (message.state, message.generation, message.attempts) == ("pending", 1, 0)
    assert message.task_id == f"{first.id}.1"
    assert message.queue == first.queue
    assert has_outgoing(db_session)


def test_a_message_is_claimed_by_one_deliverer_sent_once_or_given_back(
    db_session: Session,
) -> None:
    job_id = new_job(db_session)
    (claimed,) = claim_outgoing(db_session, job_id=job_id)
    assert claimed == Outgoing(job_id, "cpu", f"{job_id}.1", 1, 0)
    assert claim_outgoing(db_session, job_id=job_id) == []  # leased
    unclaim(db_session, [claimed])  # the broker refused it
    (again,) = claim_outgoing(db_session, job_id=job_id)
    assert again.attempts == 1  # the first send may have landed: the courier looks first
    assert mark_sent(db_session, again)
    assert not mark_sent(db_session, again)
    message = message_of(db_session, job_id)
    assert (message.state, message.claimed_until) == ("sent", None)
    assert message.sent_at is not None
    assert claim_outgoing(db_session, job_id=job_id) == []


def test_an_expired_lease_is_claimed_again(db_session: Session) -> None:
    job_id = new_job(db_session)
    (claimed,) = claim_outgoing(db_session, job_id=job_id, lease_s=0.0)
    (again,) = claim_outgoing(db_session, job_id=job_id)  # its sender died
    assert (claimed.attempts, again.attempts) == (0, 1)


def test_concurrent_deliverers_claim_a_message_once(db_factory: sessionmaker[Session]) -> None:
    with db_factory() as session:
        job_id = new_job(session)
    claims = run_together(db_factory, 8, lambda s, _: claim_outgoing(s, job_id=job_id))
    assert not [c for c in claims if isinstance(c, Exception)], claims
    assert sorted(len(c) for c in claims if isinstance(c, list)) == [0] * 7 + [1]


def test_a_pending_message_of_an_ended_job_is_voided(db_session: Session) -> None:
    tenant = new_tenant(db_session)
    dataset = new_dataset(db_session, tenant)
    job = reserve(db_session, tenant, dataset.id, 0.5, 1e-6, None, {}, iterations=3)
    cancel(db_session, tenant, job.id)
    assert claim_outgoing(db_session, job_id=job.id) == []
    assert message_of(db_session, job.id).state == "void"


def watched(session: Session, *job_ids: str) -> list[str]:
    """Which of ``job_ids`` a sweep would look for (the module's database holds other jobs)."""
    found = messages_to_check(session, waited_s=60.0, stale_after_s=HOUR, limit=10_000)
    return [w.job_id for w in found if w.job_id in job_ids]


def watch(session: Session, job_id: str) -> Watched:
    found = messages_to_check(session, waited_s=60.0, stale_after_s=HOUR, limit=10_000)
    (only,) = [w for w in found if w.job_id == job_id]
    return only


def test_a_sweep_looks_for_queued_jobs_sent_long_ago_and_silent_running_ones(
    db_session: Session,
) -> None:
    queued, running = new_job(db_session), new_job(db_session)
    for job_id in (queued, running):
        mark_sent(db_session, claim_outgoing(db_session, job_id=job_id)[0])
    assert watched(db_session, queued, running) == []  # sent just now
    sent_long_ago(db_session, queued)
    sent_long_ago(db_session, running)
    update_progress(db_session, running, iteration=0, phase="starting")
    assert take_lease(db_session, running, "worker", stale_before=utcnow(), gone=lambda _: False)
    assert watched(db_session, queued, running) == [queued]  # the running one is alive
    silence(db_session, running, 2 * HOUR)
    assert set(watched(db_session, queued, running)) == {queued, running}
    cancel(db_session, tenant_of(db_session, queued), queued)
    assert watched(db_session, queued, running) == [running]  # final jobs need no message


def test_missing_since_is_set_once_and_cleared_when_found(db_session: Session) -> None:
    job_id = new_job(db_session)
    mark_sent(db_session, claim_outgoing(db_session, job_id=job_id)[0])
    sent_long_ago(db_session, job_id)
    w = watch(db_session, job_id)
    note_whereabouts(db_session, found=[], missing=[w])
    first = message_of(db_session, job_id).missing_since
    assert first is not None
    note_whereabouts(db_session, found=[], missing=[w])
    assert message_of(db_session, job_id).missing_since == first  # since the first look
    note_whereabouts(db_session, found=[w], missing=[])
    assert message_of(db_session, job_id).missing_since is None


def test_a_lost_message_is_replaced_once_with_a_new_generation(
    db_factory: sessionmaker[Session],
) -> None:
    with db_factory() as session:
        job_id = new_job(session)
        mark_sent(session, claim_outgoing(session, job_id=job_id)[0])
        sent_long_ago(session, job_id)
        w = watch(session, job_id)
    results = run_together(
        db_factory,
        6,
        lambda s, _: replace_message(s, w, reason="message lost", stale_after_s=HOUR),
    )
    replacements = [r for r in results if r is not None]
    assert not [r for r in replacements if isinstance(r, Exception)], results
    assert replacements == [Outgoing(job_id, "cpu", f"{job_id}.2", 2, 0)]
    with db_factory() as session:
        message = message_of(session, job_id)
        assert (message.state, message.generation, message.attempts) == ("pending", 2, 1)
        assert claim_outgoing(session, job_id=job_id) == []  # the replacer holds it
        # The old generation can no longer be replaced, nor marked sent.
        assert replace_message(session, w, reason="again", stale_after_s=HOUR) is None
        assert not mark_sent(session, Outgoing(job_id, "cpu", f"{job_id}.1", 1, 0))
        assert mark_sent(session, replacements[0])  # type: ignore[arg-type]
        events = [
            e.payload for e in list_events(session, tenant_of(session, job_id), job_id).events
        ]
        assert {"reason": "message lost"} in events


def test_a_running_job_that_came_back_to_life_is_not_replaced(db_session: Session) -> None:
    job_id = new_job(db_session)
    mark_sent(db_session, claim_outgoing(db_session, job_id=job_id)[0])
    assert take_lease(db_session, job_id, "worker", stale_before=utcnow(), gone=lambda _: False)
    update_progress(db_session, job_id, iteration=0, phase="starting")
    silence(db_session, job_id, 2 * HOUR)
    w = watch(db_session, job_id)
    assert w == Watched(job_id, "cpu", 1, "running", None)
    assert beat(db_session, job_id, "worker")  # its worker was slow, not dead
    assert replace_message(db_session, w, reason="worker lost", stale_after_s=HOUR) is None
    # A queued job that a worker started meanwhile is not replaced either.
    other = new_job(db_session)
    mark_sent(db_session, claim_outgoing(db_session, job_id=other)[0])
    sent_long_ago(db_session, other)
    q = watch(db_session, other)
    update_progress(db_session, other, iteration=0, phase="starting")
    assert replace_message(db_session, q, reason="message lost", stale_after_s=HOUR) is None
