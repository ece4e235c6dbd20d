"""The job outbox: each job's broker message, committed with what makes it needed.

Why an outbox: the gateway used to commit a job's reservation and then send its message; a
broker that was down (or a gateway that died) in between left a job that held its budget and
never ran, and an idempotent retry found the job and sent nothing. Now the message is a
:class:`~service.db.models.JobMessage` row written in the reservation's own transaction
(:func:`add_message`), and deliverers (:class:`service.outbox.Courier`, in the gateway and in
every worker's sweeper) send ``pending`` rows until the broker accepts them.

One message per job: a deliverer sends a row only while it holds the row's lease
(:func:`claim_outgoing`), so concurrent deliverers never send one row twice; a row whose sender
died after sending but before marking it sent is sent again only if the broker holds no message
of the job (the courier looks first, since ``attempts`` says an earlier send may have landed).
A sent message is replaced by a new generation only when a sweep proves it lost
(:func:`replace_message`, called by :mod:`workers.sweeper`): in neither the queue nor a live
worker's hands, at two sweeps apart.

Every function runs one transaction of its own (see :mod:`service.db.engine`); none takes a
tenant, as none serves a tenant's request: job ids come from the database or the broker.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.db.engine import read_transaction, write_transaction
from service.db.models import FINAL_STATUSES, Job, JobMessage, task_id_of, utcnow
from service.db.queries import add_event, lock_job

LEASE_S: Final = 60.0
"""Seconds a deliverer holds a row it is sending; another may send it once the lease ends.
Longer than any send takes (a broker that does not answer fails a send within seconds)."""


@dataclass(frozen=True)
class Outgoing:
    """A message a deliverer holds the lease of, to send now.

    Attributes:
        job_id: the job (the task's only argument).
        queue: the broker queue.
        task_id: the message's task id (:func:`~service.db.models.task_id_of`).
        generation: the row's generation, which marking it sent must still match.
        attempts: earlier sends of this generation that may have reached the broker.
    """

    job_id: str
    queue: str
    task_id: str
    generation: int
    attempts: int


@dataclass(frozen=True)
class Watched:
    """A sent message a sweep looks for in the broker.

    Attributes:
        job_id: the job.
        queue: its queue.
        generation: the row's generation, which a replacement must still match.
        job_status: "queued" (its message should be waiting or just taken) or "running"
            (with a heartbeat older than the sweep's threshold: its worker may be dead).
        missing_since: when an earlier sweep found the message nowhere, or None.
    """

    job_id: str
    queue: str
    generation: int
    job_status: str
    missing_since: datetime | None


def add_message(session: Session, job: Job) -> JobMessage:
    """Adds the first message of a new job, pending, in the caller's transaction."""
    message = JobMessage(job_id=job.id, queue=job.queue, generation=1, state="pending")
    session.add(message)
    return message


def has_outgoing(session: Session) -> bool:
    """Whether any message waits to be sent (a read: cheap to poll)."""
    with read_transaction(session):
        statement = select(JobMessage.job_id).where(JobMessage.state == "pending").limit(1)
        return session.scalars(statement).first() is not None


def claim_outgoing(
    session: Session, *, lease_s: float = LEASE_S, limit: int = 100, job_id: str | None = None
) -> list[Outgoing]:
    """Takes the lease of pending messages no one holds (oldest first) for ``lease_s`` seconds.

    A pending message of a job that has ended is voided instead: nothing needs to run.

    Args:
        session: a session not in a transaction.
        lease_s: how long the caller may take to send them.
        limit: the most messages claimed.
        job_id: only this job's message.

    Returns:
        The claimed messages; the caller sends each, then :func:`mark_sent` (or
        :func:`unclaim` when the broker refused).
    """
    with write_transaction(session):
        now = utcnow()  # in the transaction: on SQLite, once the write lock is held
        statement = (
            select(JobMessage, Job.status)
            .join(Job, Job.id == JobMessage.job_id)
            .where(
                JobMessage.state == "pending",
                or_(JobMessage.claimed_until.is_(None), JobMessage.claimed_until < now),
            )
            .order_by(JobMessage.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=JobMessage)
        )
        if job_id is not None:
            statement = statement.where(JobMessage.job_id == job_id)
        claimed = []
        for message, status in session.execute(statement).all():
            if status in FINAL_STATUSES:
                message.state, message.claimed_until = "void", None
                continue
            claimed.append(
                Outgoing(
                    message.job_id,
                    message.queue,
                    message.task_id,
                    message.generation,
                    message.attempts,
                )
            )
            message.attempts += 1
            message.claimed_until = now + timedelta(seconds=lease_s)
        return claimed


def mark_sent(session: Session, message: Outgoing) -> bool:
    """Records that the broker accepted ``message``; False if the row moved on meanwhile."""
    with write_transaction(session):
        done = session.execute(
            update(JobMessage)
            .where(
                JobMessage.job_id == message.job_id,
                JobMessage.generation == message.generation,
                JobMessage.state == "pending",
            )
            .values(state="sent", sent_at=utcnow(), claimed_until=None, missing_since=None)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]


def unclaim(session: Session, messages: Collection[Outgoing]) -> None:
    """Gives back the lease of messages the broker did not take, for the next deliverer."""
    if not messages:
        return
    with write_transaction(session):
        for message in messages:
            session.execute(
                update(JobMessage)
                .where(
                    JobMessage.job_id == message.job_id,
                    JobMessage.generation == message.generation,
                    JobMessage.state == "pending",
                )
                .values(claimed_until=None)
            )


def messages_to_check(
    session: Session, *, waited_s: float, stale_after_s: float, limit: int = 200
) -> list[Watched]:
    """The sent messages a sweep should look for in the broker, oldest sent first.

    Those of queued jobs sent over ``waited_s`` ago (younger ones are surely still on their
    way), and those of running jobs whose heartbeat is older than ``stale_after_s`` (their
    worker may be dead, or their replacement message may be waiting for a free worker).

    Why oldest first, and at most ``limit``: the queue is first in, first out, so a lost
    message matters once the messages sent before it have been taken; checking the oldest
    keeps each sweep bounded however long the queue is.
    """
    with read_transaction(session):
        now = utcnow()
        statement = (
            select(JobMessage, Job.status)
            .join(Job, Job.id == JobMessage.job_id)
            .where(
                JobMessage.state == "sent",
                or_(
                    (Job.status == "queued")
                    & (JobMessage.sent_at < now - timedelta(seconds=waited_s)),
                    (Job.status == "running")
                    & (Job.heartbeat_at < now - timedelta(seconds=stale_after_s)),
                ),
            )
            .order_by(JobMessage.sent_at)
            .limit(limit)
        )
        return [
            Watched(m.job_id, m.queue, m.generation, status, m.missing_since)
            for m, status in session.execute(statement).all()
        ]


def note_whereabouts(
    session: Session, *, found: Collection[Watched], missing: Collection[Watched]
) -> None:
    """Clears ``missing_since`` of messages found, and sets it (if unset) on those missing."""
    if not found and not missing:
        return
    with write_transaction(session):
        now = utcnow()
        for watched, value in [(w, None) for w in found] + [(w, now) for w in missing]:
            statement = update(JobMessage).where(
                JobMessage.job_id == watched.job_id,
                JobMessage.generation == watched.generation,
                JobMessage.state == "sent",
            )
            if value is not None:
                statement = statement.where(JobMessage.missing_since.is_(None))
            session.execute(statement.values(missing_since=value))


def replace_message(
    session: Session,
    watched: Watched,
    *,
    reason: str,
    stale_after_s: float,
    lease_s: float = LEASE_S,
) -> Outgoing | None:
    """Replaces a job's lost message with a new generation, claimed by the caller to send.

    Only if nothing changed since the sweep looked: the row is still the generation it
    watched and sent, and the job is still queued, or still running with a heartbeat older
    than ``stale_after_s`` (a worker that took the job meanwhile has renewed it). So of
    concurrent sweeps, one replaces it. A "requeued" event records why.

    Returns:
        The new message to send, or None when the job or its message moved on.
    """
    with write_transaction(session):
        now = utcnow()
        job = lock_job(session, watched.job_id)
        message = session.get(JobMessage, watched.job_id, with_for_update=True)
        if (
            message is None
            or message.generation != watched.generation
            or message.state != "sent"
            or job.status != watched.job_status
        ):
            return None
        if job.status == "running" and not (
            job.heartbeat_at is not None
            and job.heartbeat_at < now - timedelta(seconds=stale_after_s)
        ):
            return None
        message.generation += 1
        message.state, message.created_at, message.sent_at = "pending", now, None
        message.attempts, message.missing_since = 1, None
        message.claimed_until = now + timedelta(seconds=lease_s)
        add_event(session, job, "requeued", {"reason": reason})
        return Outgoing(
            job.id, message.queue, task_id_of(job.id, message.generation), message.generation, 0
        )
