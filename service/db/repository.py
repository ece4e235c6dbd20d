"""Tenants, API keys, datasets, job lookups, progress and events.

Every function runs one transaction of its own on a session that is not in a transaction
(see :mod:`service.db.engine`). Functions taking a ``tenant_id`` see only that tenant's rows;
another tenant's resource raises :class:`~service.db.errors.NotFound`, exactly like a missing
one. Functions without one (:func:`update_progress`, :func:`append_event`, :func:`beat`,
:func:`requeue_stale_jobs`) are for workers, which get job ids from the queue, never from
users.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.engine import read_transaction, write_transaction
from service.db.errors import BudgetCapConflict, InvalidCursor, JobFinished, NotFound
from service.db.models import (
    FINAL_STATUSES,
    ApiKey,
    Budget,
    Dataset,
    Job,
    JobEvent,
    Tenant,
    utcnow,
)
from service.db.queries import add_event, dataset_of_tenant, job_of_tenant, lock_job
from service.security import generate_api_key, hash_api_key

MAX_EVENT_PAGE: Final = 1000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EventPage:
    """One page of a job's events, oldest first.

    Attributes:
        events: at most ``limit`` events with ids above the requested cursor.
        next_after: the cursor for the next page (the last event's id), or None when this page
            reached the newest event.
    """

    events: list[JobEvent]
    next_after: int | None


def create_tenant(session: Session, name: str) -> Tenant:
    """Creates a tenant."""
    with write_transaction(session):
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
        return tenant


def create_api_key(session: Session, tenant_id: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Creates an API key for a tenant.

    Returns:
        (the stored key row, the key itself): the key is shown once and never stored.
    """
    key, prefix = generate_api_key()
    with write_transaction(session):
        row = ApiKey(tenant_id=tenant_id, key_sha256=hash_api_key(key), prefix=prefix, name=name)
        session.add(row)
        session.flush()
        return row, key


def tenant_for_api_key(session: Session, key: str) -> Tenant | None:
    """The tenant owning an unrevoked API key, or None."""
    statement = (
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_sha256 == hash_api_key(key), ApiKey.revoked_at.is_(None))
    )
    with read_transaction(session):
        return session.scalars(statement).one_or_none()


def revoke_api_key(session: Session, tenant_id: str, key_id: str) -> ApiKey:
    """Revokes one of the tenant's keys (idempotent).

    Raises:
        NotFound: no such key for this tenant.
    """
    with write_transaction(session):
        statement = select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
        row = session.scalars(statement).one_or_none()
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return row


def create_dataset(
    session: Session,
    tenant_id: str,
    *,
    name: str,
    modality: str,
    record_count: int,
    labels: list[str],
    sha256: str,
    storage_path: str,
    epsilon_cap: float,
    delta_cap: float,
    text_column: str = "text",
    label_column: str = "label",
    image_shape: Sequence[int] | None = None,
) -> Dataset:
    """Registers an uploaded dataset and, the first time its data is seen, its budget.

    The budget is keyed by (tenant, ``sha256``): a re-upload of the same data shares the
    budget already there, with what was spent of it. The caps are fixed by the first upload.

    Args:
        session: a session not in a transaction.
        tenant_id: the owner.
        name: for humans.
        modality: "image" or "text" (the engine's modalities; not checked here).
        record_count: number of private records.
        labels: the label names.
        sha256: sha256 hex of the canonical data file.
        storage_path: where the data is stored.
        epsilon_cap: the budget's epsilon cap, > 0.
        delta_cap: the budget's delta cap, in (0, 1).
        text_column, label_column: the table columns the data was validated with (texts).
        image_shape: (height, width, channels) of every image (public schema); None for texts.

    Raises:
        BudgetCapConflict: this data already has a budget with other caps.
    """
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    if not 0 < epsilon_cap < float("inf"):
        raise ValueError(f"epsilon_cap must be finite and > 0, got {epsilon_cap!r}")
    if not 0 < delta_cap < 1:
        raise ValueError(f"delta_cap must be in (0, 1), got {delta_cap!r}")
    with write_transaction(session):
        budget = _get_or_create_budget(session, tenant_id, sha256, epsilon_cap, delta_cap)
        if (budget.epsilon_cap, budget.delta_cap) != (float(epsilon_cap), float(delta_cap)):
            raise BudgetCapConflict(
                f"this data was uploaded before with a budget cap of epsilon "
                f"{budget.epsilon_cap:.6g}, delta {budget.delta_cap:.6g}; a re-upload shares "
                "that budget and cannot change its cap"
            )
        dataset = Dataset(
            tenant_id=tenant_id,
            name=name,
            modality=modality,
            record_count=record_count,
            labels=list(labels),
            sha256=sha256,
            storage_path=storage_path,
            text_column=text_column,
            label_column=label_column,
            image_shape=None if image_shape is None else [int(n) for n in image_shape],
        )
        session.add(dataset)
        session.flush()
        return dataset


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    """One of the tenant's (undeleted) datasets.

    Raises:
        NotFound: no such dataset for this tenant.
    """
    with read_transaction(session):
        return dataset_of_tenant(session, tenant_id, dataset_id)


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    """Marks one of the tenant's datasets deleted; its budget and jobs are kept.

    Raises:
        NotFound: no such (undeleted) dataset for this tenant.
    """
    with write_transaction(session):
        dataset = dataset_of_tenant(session, tenant_id, dataset_id)
        dataset.deleted_at = utcnow()
        return dataset


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """One of the tenant's jobs.

    Raises:
        NotFound: no such job for this tenant.
    """
    with read_transaction(session):
        return job_of_tenant(session, tenant_id, job_id)


def list_events(
    session: Session, tenant_id: str, job_id: str, *, after: int = 0, limit: int = 100
) -> EventPage:
    """A page of one of the tenant's job's events with ids above ``after``, oldest first.

    To follow a running job, poll again with the last event's id once ``next_after`` is None.

    Args:
        after: the cursor: 0 for the first page, then the previous page's ``next_after``.
        limit: page size, 1 to :data:`MAX_EVENT_PAGE`.

    Raises:
        NotFound: no such job for this tenant.
    """
    if not 1 <= limit <= MAX_EVENT_PAGE:
        raise ValueError(f"limit must be in [1, {MAX_EVENT_PAGE}], got {limit!r}")
    with read_transaction(session):
        job_of_tenant(session, tenant_id, job_id)
        statement = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit + 1)
        )
        events = list(session.scalars(statement))
    more = len(events) > limit
    events = events[:limit]
    return EventPage(events=events, next_after=events[-1].id if more else None)


def update_progress(session: Session, job_id: str, *, iteration: int, phase: str) -> Job:
    """Records a worker's progress; the first update moves a queued job to running.

    Raises:
        NotFound: no such job.
        JobFinished: the job is final (e.g. canceled): the worker should stop.
    """
    with write_transaction(session):
        job = lock_job(session, job_id)
        if job.status in FINAL_STATUSES:
            raise JobFinished(f"job {job_id} is {job.status}")
        if not 0 <= iteration <= job.iterations:
            raise ValueError(f"iteration must be in [0, {job.iterations}], got {iteration!r}")
        now = utcnow()
        if job.status == "queued":
            job.status, job.started_at = "running", now
        job.iteration, job.phase, job.updated_at, job.heartbeat_at = iteration, phase, now, now
        session.flush()
        add_event(session, job, "progress", {"iteration": iteration, "phase": phase})
        return job


def beat(session: Session, job_id: str) -> bool:
    """Records that the worker running a job is alive; returns False if the job is not running.

    Workers call this between progress updates, so that a long phase is not taken for a dead
    worker. It records no event.

    Raises:
        NotFound: no such job.
    """
    with write_transaction(session):
        job = lock_job(session, job_id)
        if job.status != "running":
            return False
        job.heartbeat_at = utcnow()
        return True


def requeue_stale_jobs(session: Session, *, stale_after_s: float, limit: int = 100) -> list[Job]:
    """Claims the running jobs whose heartbeat is older than ``stale_after_s`` for re-enqueueing.

    A claimed job's heartbeat is set to now and a "requeued" event is added, in one transaction,
    so each stale job is claimed by one caller once per ``stale_after_s``: concurrent or
    repeated sweeps do not enqueue it again (PostgreSQL skips rows another sweep holds). The
    caller must then send each job's task; a job that is claimed but whose task is never sent
    is claimed again once another ``stale_after_s`` has passed.

    Args:
        session: a session not in a transaction.
        stale_after_s: seconds without a heartbeat after which a running job's worker is taken
            for dead, > 0.
        limit: the most jobs claimed in one call.

    Returns:
        The claimed jobs, oldest heartbeat first.
    """
    if not stale_after_s > 0:
        raise ValueError(f"stale_after_s must be > 0, got {stale_after_s!r}")
    with write_transaction(session):
        now = utcnow()  # in the transaction: on SQLite, once the write lock is held
        statement = (
            select(Job)
            .where(
                Job.status == "running", Job.heartbeat_at < now - timedelta(seconds=stale_after_s)
            )
            .order_by(Job.heartbeat_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        jobs = list(session.scalars(statement))
        for job in jobs:
            job.heartbeat_at = now
            add_event(session, job, "requeued", {"stale_after_s": stale_after_s})
        return jobs


def append_event(session: Session, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
    """Appends an event to a job (e.g. a log line or a metric from a worker).

    Raises:
        NotFound: no such job.
    """
    with write_transaction(session):
        job = lock_job(session, job_id)
        return add_event(session, job, kind, payload)


def _get_or_create_budget(
    session: Session, tenant_id: str, sha256: str, epsilon_cap: float, delta_cap: float
) -> Budget:
    budget = session.get(Budget, (tenant_id, sha256))
    if budget is not None:
        return budget
    try:
        # Two first uploads of the same data race on PostgreSQL; the loser reads the winner's.
        with session.begin_nested():
            budget = Budget(
                tenant_id=tenant_id,
                dataset_sha256=sha256,
                epsilon_cap=float(epsilon_cap),
                delta_cap=float(delta_cap),
            )
            session.add(budget)
    except IntegrityError:
        budget = session.get(Budget, (tenant_id, sha256))
        if budget is None:
            raise
    return budget


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first; ``next_cursor`` is None on the last page."""

    items: list[Any]
    next_cursor: str | None


def _encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor("cursor is not one this server returned; start without it") from exc


def _page(session: Session, statement: Any, model: Any, cursor: str | None, limit: int) -> Page:
    if not 1 <= limit <= MAX_EVENT_PAGE:
        raise ValueError(f"limit must be in [1, {MAX_EVENT_PAGE}], got {limit!r}")
    if cursor is not None:
        created, row_id = _decode_cursor(cursor)
        statement = statement.where(
            or_(
                model.created_at < created,
                and_(model.created_at == created, model.id < row_id),
            )
        )
    statement = statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows = list(session.scalars(statement))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, _encode_cursor(rows[-1].created_at, rows[-1].id) if more else None)


def list_datasets(
    session: Session, tenant_id: str, *, cursor: str | None = None, limit: int = 50
) -> Page:
    """The tenant's undeleted datasets, newest first."""
    with read_transaction(session):
        statement = select(Dataset).where(
            Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)
        )
        return _page(session, statement, Dataset, cursor, limit)


def list_jobs(
    session: Session, tenant_id: str, *, cursor: str | None = None, limit: int = 50
) -> Page:
    """The tenant's jobs, newest first."""
    with read_transaction(session):
        statement = select(Job).where(Job.tenant_id == tenant_id)
        return _page(session, statement, Job, cursor, limit)


def tenant_named(session: Session, name: str) -> Tenant:
    """The oldest tenant called ``name``, created when there is none (for ``privevo keys``)."""
    with write_transaction(session):
        statement = select(Tenant).where(Tenant.name == name).order_by(Tenant.created_at)
        tenant = session.scalars(statement).first()
        if tenant is None:
            tenant = Tenant(name=name)
            session.add(tenant)
            session.flush()
        return tenant
