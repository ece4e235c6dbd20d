"""Statements shared by :mod:`service.db.budget` and :mod:`service.db.repository`.

These run inside the caller's transaction (:func:`service.db.engine.write_transaction` or
:func:`~service.db.engine.read_transaction`) and never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.errors import NotFound
from service.db.models import Budget, Dataset, Job, JobEvent


def dataset_of_tenant(
    session: Session, tenant_id: str, dataset_id: str, *, include_deleted: bool = False
) -> Dataset:
    """The tenant's dataset; another tenant's, or a deleted one, is :class:`NotFound`."""
    statement = select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
    if not include_deleted:
        statement = statement.where(Dataset.deleted_at.is_(None))
    dataset = session.scalars(statement).one_or_none()
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


def job_of_tenant(session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job; another tenant's is :class:`NotFound`."""
    statement = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    job = session.scalars(statement).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def lock_budget(session: Session, tenant_id: str, sha256: str) -> Budget:
    """The budget row, locked until the transaction ends (PostgreSQL; SQLite's lock is global)."""
    statement = (
        select(Budget)
        .where(Budget.tenant_id == tenant_id, Budget.dataset_sha256 == sha256)
        .with_for_update()
    )
    return session.scalars(statement).one()


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


def budget_of_job(session: Session, job_id: str) -> tuple[str, str]:
    """(tenant id, data sha256) of the budget a job draws on."""
    statement = select(Dataset.tenant_id, Dataset.sha256).join(
        Job, (Job.tenant_id == Dataset.tenant_id) & (Job.dataset_id == Dataset.id)
    )
    row = session.execute(statement.where(Job.id == job_id)).one_or_none()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return row.tenant_id, row.sha256


def add_event(session: Session, job: Job, kind: str, payload: dict[str, Any]) -> JobEvent:
    """Appends an event to ``job``, whose row the transaction holds locked (or created)."""
    event = JobEvent(job_id=job.id, kind=kind, payload=payload)
    session.add(event)
    session.flush()
    return event
