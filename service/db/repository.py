"""Tenants, API keys, datasets, job lookups, progress and events.

Every function runs one transaction of its own on a session that is not in a transaction
(see :mod:`service.db.engine`). Functions taking a ``tenant_id`` see only that tenant's rows;
another tenant's resource raises :class:`~service.db.errors.NotFound`, exactly like a missing
one. Functions without one (:func:`update_progress`, :func:`append_event`, the job leases, and
those of :mod:`service.db.outbox`) are for workers, which get job ids from the queue, never from
users.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from service.db.budget import place_in_budget, store_digests
from service.db.engine import read_transaction, write_transaction
from service.db.errors import InvalidCursor, JobFinished, NotFound, QuotaExceeded
from service.db.models import (
    COLUMN_LENGTH,
    DATASET_ROLES,
    FINAL_STATUSES,
    ApiKey,
    Budget,
    Dataset,
    Job,
    JobEvent,
    Tenant,
    TenantSecret,
    utcnow,
)
from service.db.queries import (
    add_event,
    could_be_id,
    dataset_of_tenant,
    job_of_tenant,
    lock_budgets,
    lock_job,
)
from service.digests import RecordDigests, new_digest_key
from service.security import generate_api_key, hash_api_key

MAX_EVENT_PAGE: Final = 1000
MAX_EVENT_SEQ: Final = 2**31 - 1
"""The largest event number a job's events can reach (``job_events.seq`` is 32-bit)."""
_NOT_OUR_CURSOR: Final = "cursor is not one this server returned; start without it"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EventPage:
    """One page of a job's events, oldest first.

    Attributes:
        events: at most ``limit`` events with ``seq`` above the requested cursor.
        next_after: the cursor for the next page (the last event's ``seq``), or None when this
            page reached the newest event.
    """

    events: list[JobEvent]
    next_after: int | None


def create_tenant(session: Session, name: str) -> Tenant:
    """Creates a tenant, with the key its record digests will be made with."""
    with write_transaction(session):
        return _new_tenant(session, name)


def _new_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    session.add(TenantSecret(tenant_id=tenant.id, digest_key=new_digest_key()))
    session.flush()
    return tenant


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    """A tenant, with the limits the operator set for it.

    Raises:
        NotFound: no such tenant.
    """
    with read_transaction(session):
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id} not found")
        return tenant


def set_tenant_limits(
    session: Session,
    tenant_id: str,
    *,
    max_epsilon_cap: float | None,
    max_delta_cap: float | None,
) -> Tenant:
    """Sets the largest budget caps a tenant may give its uploads (for the operator).

    None falls back to the server's ``PRIVEVO_MAX_EPSILON_CAP`` / ``PRIVEVO_MAX_DELTA_CAP``.
    Budgets already made keep their caps.

    Raises:
        NotFound: no such tenant.
    """
    if max_epsilon_cap is not None and not 0 < max_epsilon_cap < float("inf"):
        raise ValueError(f"max_epsilon_cap must be finite and > 0, got {max_epsilon_cap!r}")
    if max_delta_cap is not None and not 0 < max_delta_cap < 1:
        raise ValueError(f"max_delta_cap must be in (0, 1), got {max_delta_cap!r}")
    with write_transaction(session):
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id} not found")
        tenant.max_epsilon_cap, tenant.max_delta_cap = max_epsilon_cap, max_delta_cap
        return tenant


def set_tenant_quotas(
    session: Session,
    tenant_id: str,
    *,
    max_queued_jobs: int | None,
    max_stored_bytes: int | None,
) -> Tenant:
    """Sets a tenant's own quotas (for the operator); None falls back to the server's
    ``PRIVEVO_MAX_QUEUED_JOBS`` / ``PRIVEVO_MAX_STORED_BYTES``.

    Raises:
        NotFound: no such tenant.
    """
    for name, value in (
        ("max_queued_jobs", max_queued_jobs),
        ("max_stored_bytes", max_stored_bytes),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    with write_transaction(session):
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id} not found")
        tenant.max_queued_jobs, tenant.max_stored_bytes = max_queued_jobs, max_stored_bytes
        return tenant


def tenant_digest_key(session: Session, tenant_id: str) -> bytes:
    """The key of the tenant's record digests (:mod:`service.digests`), made once per tenant.

    Made here for a tenant that has none (one made by code older than the keys; the migration
    that added them gave every tenant of its time one). Never returned by the API or logged.

    Raises:
        NotFound: no such tenant.
    """
    with read_transaction(session):
        secret = session.get(TenantSecret, tenant_id)
        if secret is not None:
            return secret.digest_key
    with write_transaction(session):
        lock_budgets(session, tenant_id)
        secret = session.get(TenantSecret, tenant_id)
        if secret is None:
            secret = TenantSecret(tenant_id=tenant_id, digest_key=new_digest_key())
            session.add(secret)
            session.flush()
        return secret.digest_key


def create_api_key(
    session: Session,
    tenant_id: str,
    name: str | None = None,
    *,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Creates an API key for a tenant.

    Args:
        expires_at: when the key stops working (timezone-aware), or None for never.

    Returns:
        (the stored key row, the key itself): the key is shown once and never stored.
    """
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError(f"expires_at must be timezone-aware, got {expires_at!r}")
    key, prefix = generate_api_key()
    with write_transaction(session):
        row = ApiKey(
            tenant_id=tenant_id,
            key_sha256=hash_api_key(key),
            prefix=prefix,
            name=name,
            expires_at=expires_at,
        )
        session.add(row)
        session.flush()
        return row, key


def tenant_for_api_key(session: Session, key: str) -> Tenant | None:
    """The tenant owning an API key that is neither revoked nor expired, or None.

    Checked on every request, so revoking a key (or its expiry) takes effect at once.
    """
    with read_transaction(session):
        now = utcnow()
        statement = (
            select(Tenant)
            .join(ApiKey, ApiKey.tenant_id == Tenant.id)
            .where(
                ApiKey.key_sha256 == hash_api_key(key),
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        )
        return session.scalars(statement).one_or_none()


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    """The tenant's keys, oldest first (their hashes and prefixes; never the keys)."""
    statement = (
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    with read_transaction(session):
        return list(session.scalars(statement))


def revoke_api_key_by_prefix(session: Session, prefix: str) -> ApiKey:
    """Revokes the key with this display prefix, whichever tenant it is (for the operator).

    Raises:
        NotFound: no key has this prefix.
        ValueError: several keys have it (48 random bits make that rare): revoke by id.
    """
    with write_transaction(session):
        rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)))
        if not rows:
            raise NotFound(f"no API key starts with {prefix}")
        if len(rows) > 1:
            raise ValueError(f"{len(rows)} keys start with {prefix}; revoke them by id")
        row = rows[0]
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return row


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
    epsilon_cap: float | None = None,
    delta_cap: float | None = None,
    text_column: str = "text",
    label_column: str = "label",
    image_shape: Sequence[int] | None = None,
    digests: RecordDigests | None = None,
    user_column: str | None = None,
    role: str = "private",
    size_bytes: int = 0,
    max_stored_bytes: int | None = None,
    dataset_id: str | None = None,
    expires_at: datetime | None = None,
) -> Dataset:
    """Registers an uploaded dataset: a private one in the budget its records call for, a
    held-out one without any.

    A private dataset sharing any record digest (or its file's bytes) with private datasets of
    the tenant of its own unit of privacy, deleted ones included, draws on their budget, with
    what was spent of it; one sharing nothing gets a budget of its own with these caps (see
    :mod:`service.db.budget`). A held-out dataset only keeps its record digests (to refuse an
    evaluation overlapping a job's private data); no job spends on it.

    Args:
        session: a session not in a transaction.
        tenant_id: the owner.
        name: for humans.
        modality: "image" or "text" (the engine's modalities; not checked here).
        record_count: number of private records.
        labels: the label names.
        sha256: sha256 hex of the uploaded file.
        storage_path: where the data is stored.
        epsilon_cap: the budget's epsilon cap, > 0; private data only.
        delta_cap: the budget's delta cap, in (0, 1); private data only.
        text_column, label_column: the table columns the data was validated with (texts).
        image_shape: (height, width, channels) of every image (public schema); None for texts.
        digests: the records' keyed digests under the tenant's key (:func:`tenant_digest_key`),
            or None to match on the file's bytes alone.
        user_column: the field or array naming each record's user, which the upload was
            validated with: the dataset, its budget and its jobs are then user-level; None for
            record-level (and for held-out data, always).
        role: "private" or "heldout" (see :class:`~service.db.models.Dataset`).
        size_bytes: the stored upload's size, counted against the tenant's storage quota.
        max_stored_bytes: the most bytes the tenant's undeleted uploads may take together,
            this one included, checked under the tenant's lock; the tenant's own quota takes
            its place where the operator set one. None: no limit.
        dataset_id: the new dataset's id when chosen beforehand (its upload was encrypted
            with the data key made for that id); None for a fresh one.
        expires_at: when the expiry sweep purges the dataset; None to keep it until deleted.

    Raises:
        BudgetCapConflict: the data shares records with data of its unit under a smaller cap.
        QuotaExceeded: the upload would take the tenant past its storage quota.
    """
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    if role not in DATASET_ROLES:
        raise ValueError(f"role must be one of {DATASET_ROLES}, got {role!r}")
    if role == "heldout" and (epsilon_cap, delta_cap, user_column) != (None, None, None):
        raise ValueError("held-out data has no budget caps and no user column")
    if role == "private" and (epsilon_cap is None or not 0 < epsilon_cap < float("inf")):
        raise ValueError(f"epsilon_cap must be finite and > 0, got {epsilon_cap!r}")
    if role == "private" and (delta_cap is None or not 0 < delta_cap < 1):
        raise ValueError(f"delta_cap must be in (0, 1), got {delta_cap!r}")
    if user_column is not None and not 0 < len(user_column) <= COLUMN_LENGTH:
        raise ValueError(f"user_column must have 1-{COLUMN_LENGTH} characters, got {user_column!r}")
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes!r}")
    unit = "record" if user_column is None else "user"
    with write_transaction(session):
        lock_budgets(session, tenant_id)
        _check_stored_bytes(session, tenant_id, size_bytes, max_stored_bytes)
        budget = None
        if epsilon_cap is not None and delta_cap is not None:
            budget = Budget(
                tenant_id=tenant_id,
                epsilon_cap=float(epsilon_cap),
                delta_cap=float(delta_cap),
                privacy_unit=unit,
            )
            session.add(budget)
            session.flush()
        dataset = Dataset(
            tenant_id=tenant_id,
            name=name,
            modality=modality,
            record_count=record_count,
            labels=list(labels),
            sha256=sha256,
            budget_id=None if budget is None else budget.id,
            storage_path=storage_path,
            text_column=text_column,
            label_column=label_column,
            image_shape=None if image_shape is None else [int(n) for n in image_shape],
            duplicate_records=0 if digests is None else digests.duplicates,
            privacy_unit=unit,
            user_column=user_column,
            role=role,
            size_bytes=size_bytes,
            expires_at=expires_at,
        )
        if dataset_id is not None:  # chosen before the upload was encrypted with its data key
            dataset.id = dataset_id
        session.add(dataset)
        session.flush()
        if epsilon_cap is None or delta_cap is None:
            store_digests(session, dataset, digests)
        else:
            place_in_budget(session, dataset, digests, epsilon_cap=epsilon_cap, delta_cap=delta_cap)
        return dataset


def stored_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's undeleted uploads, as counted against its storage quota."""
    with read_transaction(session):
        return _stored_bytes(session, tenant_id)


def _stored_bytes(session: Session, tenant_id: str) -> int:
    statement = select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
        Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)
    )
    return int(session.scalar(statement) or 0)


def storage_quota(session: Session, tenant_id: str, default: int | None) -> int | None:
    """The tenant's storage quota in bytes: its own where the operator set one, else
    ``default`` (None: no limit)."""
    with read_transaction(session):
        own = session.scalar(select(Tenant.max_stored_bytes).where(Tenant.id == tenant_id))
    return default if own is None else own


def _check_stored_bytes(
    session: Session, tenant_id: str, size_bytes: int, default: int | None
) -> None:
    own = session.scalar(select(Tenant.max_stored_bytes).where(Tenant.id == tenant_id))
    limit = default if own is None else own
    if limit is None:
        return
    used = _stored_bytes(session, tenant_id)
    if used + size_bytes > limit:
        raise QuotaExceeded("max_stored_bytes", storage_message(used, size_bytes, limit))


def storage_message(used: int, size_bytes: int, limit: int) -> str:
    """Why an upload of ``size_bytes`` is refused with ``used`` of ``limit`` bytes stored."""
    return (
        f"this upload ({size_bytes} bytes) would take your stored data to {used + size_bytes} "
        f"bytes, past your storage quota (max_stored_bytes = {limit}); delete datasets you no "
        "longer need, or ask the operator for more"
    )


def uploads_in_use(session: Session, keys: Collection[str]) -> set[str]:
    """The storage keys among ``keys`` that a dataset not deleted keeps its upload under.

    For the orphan-upload sweep (:func:`service.uploads.sweep_orphan_uploads`), which runs for
    the installation, not for a tenant: it learns only which keys are someone's.
    """
    if not keys:
        return set()
    with read_transaction(session):
        statement = select(Dataset.storage_path).where(
            Dataset.storage_path.in_(list(keys)), Dataset.deleted_at.is_(None)
        )
        return set(session.scalars(statement))


def get_dataset(
    session: Session, tenant_id: str, dataset_id: str, *, include_deleted: bool = False
) -> Dataset:
    """One of the tenant's datasets (undeleted, unless ``include_deleted``).

    Raises:
        NotFound: no such dataset for this tenant.
    """
    with read_transaction(session):
        return dataset_of_tenant(session, tenant_id, dataset_id, include_deleted=include_deleted)


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    """Marks one of the tenant's datasets deleted; its budget, jobs and record digests are kept
    (a later upload of the same records must find the budget that paid for them).

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


def jobs_evaluated_on(session: Session, tenant_id: str, dataset_id: str) -> list[Job]:
    """The tenant's jobs that name ``dataset_id`` as their held-out evaluation data."""
    statement = select(Job).where(Job.tenant_id == tenant_id, Job.eval_dataset_id == dataset_id)
    with read_transaction(session):
        return list(session.scalars(statement))


def list_events(
    session: Session, tenant_id: str, job_id: str, *, after: int = 0, limit: int = 100
) -> EventPage:
    """A page of one of the tenant's job's events with ids above ``after``, oldest first.

    To follow a running job, poll again with the last event's ``seq`` once ``next_after`` is
    None. Cursors are the job's own event numbers, so they tell nothing of other jobs.

    Args:
        after: the cursor: 0 for the first page, then the previous page's ``next_after``.
        limit: page size, 1 to :data:`MAX_EVENT_PAGE`.

    Raises:
        NotFound: no such job for this tenant.
    """
    if not 1 <= limit <= MAX_EVENT_PAGE:
        raise ValueError(f"limit must be in [1, {MAX_EVENT_PAGE}], got {limit!r}")
    # seq is a 32-bit column, and PostgreSQL refuses a larger bound for it; no event lies
    # above its largest value, so a larger cursor asks the same as that one.
    after = min(after, MAX_EVENT_SEQ)
    with read_transaction(session):
        job_of_tenant(session, tenant_id, job_id)
        statement = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after)
            .order_by(JobEvent.seq)
            .limit(limit + 1)
        )
        events = list(session.scalars(statement))
    more = len(events) > limit
    events = events[:limit]
    return EventPage(events=events, next_after=events[-1].seq if more else None)


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


def take_lease(
    session: Session,
    job_id: str,
    holder: str,
    *,
    stale_before: datetime,
    gone: Callable[[str], bool],
) -> bool:
    """Makes ``holder`` the one worker process running the job; returns whether it is.

    The job is free when nobody holds it, when ``holder`` does already, when its holder's
    heartbeat is older than ``stale_before`` (taken for dead: the stale-job sweeper sends such
    a job again), or when ``gone(its holder)`` says that process no longer exists (a worker
    killed on this machine: its job is taken over at once, not a stale interval later). Taking
    it renews the heartbeat.

    Raises:
        NotFound: no such job.
    """
    with write_transaction(session):
        job = lock_job(session, job_id)
        current = job.lease_holder
        if not (
            current is None
            or current == holder
            or job.heartbeat_at is None
            or job.heartbeat_at < stale_before
            or gone(current)
        ):
            return False
        job.lease_holder, job.heartbeat_at = holder, utcnow()
        return True


def release_lease(session: Session, job_id: str, holder: str) -> None:
    """Gives the job up, if ``holder`` still holds it (a delivery that took it over keeps it)."""
    with write_transaction(session):
        job = lock_job(session, job_id)
        if job.lease_holder == holder:
            job.lease_holder = None


def beat(session: Session, job_id: str, holder: str) -> bool:
    """Records that ``holder``, the worker running a job, is alive; returns False once another
    delivery has taken the job over (``holder`` should then stop: its work is being redone).

    Workers call this between progress updates, so that a long phase is not taken for a dead
    worker. Only a running job's heartbeat is renewed. It records no event.

    Raises:
        NotFound: no such job.
    """
    with write_transaction(session):
        job = lock_job(session, job_id)
        if job.lease_holder != holder:
            return False
        if job.status == "running":
            job.heartbeat_at = utcnow()
        return True


def append_event(session: Session, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
    """Appends an event to a job (e.g. a log line or a metric from a worker).

    Raises:
        NotFound: no such job.
    """
    with write_transaction(session):
        job = lock_job(session, job_id)
        return add_event(session, job, kind, payload)


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first; ``next_cursor`` is None on the last page."""

    items: list[Any]
    next_cursor: str | None


def _encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor of :func:`_encode_cursor` holds.

    Anything else is refused before it reaches a query: a time without its zone (which the
    database layer cannot place) and an id no row can have (PostgreSQL refuses NUL in text).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        when = datetime.fromisoformat(created)
    except (ValueError, TypeError) as exc:
        raise InvalidCursor(_NOT_OUR_CURSOR) from exc
    if when.tzinfo is None or not isinstance(row_id, str) or not could_be_id(row_id):
        raise InvalidCursor(_NOT_OUR_CURSOR)
    return when, row_id


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
            tenant = _new_tenant(session, name)
        return tenant
