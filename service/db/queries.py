"""Statements shared by :mod:`service.db.budget` and :mod:`service.db.repository`.

These run inside the caller's transaction (:func:`service.db.engine.write_transaction` or
:func:`~service.db.engine.read_transaction`) and never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.errors import NotFound
from service.db.models import ID_LENGTH, Dataset, Job, JobEvent, Tenant


def could_be_id(value: str) -> bool:
    """Whether a row could have this id: ids are short and never hold NUL, which PostgreSQL
    refuses in text. Anything else is not found without asking the database."""
    return len(value) <= ID_LENGTH and "\x00" not in value


def dataset_of_tenant(
    session: Session, tenant_id: str, dataset_id: str, *, include_deleted: bool = False
) -> Dataset:
    """The tenant's dataset; another tenant's, or a deleted one, is :class:`NotFound`."""
    if not could_be_id(dataset_id):
        raise NotFound(f"dataset {dataset_id} not found")
    statement = select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
    if not include_deleted:
        statement = statement.where(Dataset.deleted_at.is_(None))
    dataset = session.scalars(statement).one_or_none()
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


def job_of_tenant(session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job; another tenant's is :class:`NotFound`."""
    if not could_be_id(job_id):
        raise NotFound(f"job {job_id} not found")
    statement = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    job = session.scalars(statement).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def lock_budgets(session: Session, tenant_id: str) -> None:
    """Takes the lock that guards all of a tenant's budgets until the transaction ends.

    One lock per tenant, its row in ``tenants`` (PostgreSQL: ``FOR NO KEY UPDATE``, which does
    not block inserts of rows referencing the tenant; SQLite: ``BEGIN IMMEDIATE`` already
    serialises every writer). Per budget would not do: an upload that shares records with
    datasets of several budgets merges them, which changes the budget a dataset draws on, and
    a reservation that had read the old one could then be decided against a budget that no
    longer counts all its jobs. Under one tenant lock, every reservation, refund and merge
    sees the grouping as the last one left it. Reservations and refunds take milliseconds;
    an upload holds the lock while it stores its record digests.
    """
    statement = select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    if session.scalars(statement).one_or_none() is None:
        raise NotFound(f"tenant {tenant_id} not found")


def lock_job(session: Session, job_id: str) -> Job:
    """The job row, locked until the transaction ends.

    Holding it is also what keeps a job's event ids in commit order: events of one job are only
    appended under this lock (or by the transaction that creates the job), so a reader paging by
    id can never see a later id commit before an earlier one.
    """
    statement = select(Job).where(Job.id == job_id).with_for_update()
    job = session.scalars(statement).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def tenant_of_job(session: Session, job_id: str) -> str:
    """The tenant of a job, whose budget lock (:func:`lock_budgets`) guards the job's budget."""
    tenant_id = session.scalars(select(Job.tenant_id).where(Job.id == job_id)).one_or_none()
    if tenant_id is None:
        raise NotFound(f"job {job_id} not found")
    return tenant_id


def add_event(session: Session, job: Job, kind: str, payload: dict[str, Any]) -> JobEvent:
    """Appends an event to ``job``, whose row the transaction holds locked (or created).

    The lock is what makes the job's next ``seq`` (its last plus one) safe to take: no other
    transaction can append to the job until this one ends (and the unique (job, seq) pair
    would refuse a second writer rather than let two events share a number).
    """
    last = session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job.id))
    event = JobEvent(job_id=job.id, seq=(last or 0) + 1, kind=kind, payload=payload)
    session.add(event)
    session.flush()
    return event
