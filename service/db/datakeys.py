"""Rows of ``data_keys`` (wrapped data keys) and of datasets past their expiry or with a purge
to finish: the queries of encryption at rest (:mod:`service.crypto`) and of the purge that
crypto-shreds a dataset."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.engine import read_transaction, write_transaction
from service.db.models import DataKey, Dataset, Job, utcnow


def add_data_key(
    session: Session, scope: str, wrapped: bytes, *, upload_prefix: str | None = None
) -> bytes:
    """Stores the wrapped data key of ``scope`` unless it has one already, and returns the one
    stored: two writers making the key of one scope at once both end with the same key."""
    try:
        with write_transaction(session):
            session.add(DataKey(scope=scope, wrapped=wrapped, upload_prefix=upload_prefix))
        return wrapped
    except IntegrityError:
        found = wrapped_key(session, scope)
        if found is None:  # the conflict was on upload_prefix, which the caller chose
            raise
        return found


def wrapped_key(session: Session, scope: str) -> bytes | None:
    """The wrapped data key of ``scope``, or None when it has none (never had, or shredded)."""
    with read_transaction(session):
        return session.scalar(select(DataKey.wrapped).where(DataKey.scope == scope))


def upload_key(session: Session, upload_prefix: str) -> tuple[str, bytes] | None:
    """The scope and wrapped data key of the dataset uploaded under ``upload_prefix``."""
    with read_transaction(session):
        row = session.execute(
            select(DataKey.scope, DataKey.wrapped).where(DataKey.upload_prefix == upload_prefix)
        ).one_or_none()
    return None if row is None else (row[0], row[1])


def delete_data_key(session: Session, scope: str) -> bool:
    """Deletes the wrapped data key of ``scope`` (crypto-shredding it); whether there was one."""
    with write_transaction(session):
        result = session.execute(delete(DataKey).where(DataKey.scope == scope))
    return bool(getattr(result, "rowcount", 0))


def delete_orphan_upload_key(session: Session, upload_prefix: str) -> bool:
    """Deletes the data key of the upload under ``upload_prefix`` if no dataset row has its
    scope (the upload's dataset was never committed); whether it did."""
    with write_transaction(session):
        committed = select(Dataset.id).where(Dataset.id == DataKey.scope)
        result = session.execute(
            delete(DataKey).where(DataKey.upload_prefix == upload_prefix, ~committed.exists())
        )
    return bool(getattr(result, "rowcount", 0))


def rewrap_data_keys(session: Session, rewrap: Callable[[str, bytes], bytes]) -> int:
    """Replaces every wrapped data key by ``rewrap(scope, wrapped)``, all in one transaction:
    a ``rewrap`` that raises changes no row. Returns how many rows it rewrapped."""
    with write_transaction(session):
        rows = list(session.scalars(select(DataKey).order_by(DataKey.scope).with_for_update()))
        for row in rows:
            row.wrapped = rewrap(row.scope, row.wrapped)
    return len(rows)


def dataset_is_live(session: Session, dataset_id: str) -> bool:
    """Whether the dataset exists and is not deleted: only such a dataset may get a data key
    on a write, so that a write racing with a purge cannot make a key the purge never sees."""
    with read_transaction(session):
        statement = select(Dataset.id).where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None))
        return session.scalar(statement) is not None


def job_exists(session: Session, job_id: str) -> bool:
    """Whether ``job_id`` names a job (a result's data key is made for real jobs only)."""
    with read_transaction(session):
        return session.scalar(select(Job.id).where(Job.id == job_id)) is not None


def expired_datasets(session: Session, now: datetime | None = None) -> list[tuple[str, str]]:
    """The (tenant id, dataset id) of the datasets not deleted whose expiry has passed, for the
    expiry sweep, which purges them as ``DELETE /v1/datasets/{id}`` does."""
    with read_transaction(session):
        statement = (
            select(Dataset.tenant_id, Dataset.id)
            .where(Dataset.deleted_at.is_(None), Dataset.expires_at <= (now or utcnow()))
            .order_by(Dataset.expires_at)
        )
        return [(row[0], row[1]) for row in session.execute(statement)]


def mark_purged(session: Session, dataset_id: str) -> None:
    """Records that the deleted dataset's files are gone."""
    with write_transaction(session):
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(purged_at=utcnow()))


def unfinished_purges(session: Session) -> list[Dataset]:
    """The deleted datasets whose files a store failure kept from being deleted."""
    with read_transaction(session):
        statement = select(Dataset).where(
            Dataset.deleted_at.is_not(None), Dataset.purged_at.is_(None)
        )
        return list(session.scalars(statement.order_by(Dataset.deleted_at)))
