"""Helpers for the database tests: tenants, datasets and threads that start together."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from pe_core.privacy import DpEvent
from service.db import Dataset, Job, create_dataset, create_tenant, write_transaction
from service.db.models import utcnow
from service.digests import RecordDigests

T = TypeVar("T")

VOTES = DpEvent("discrete_gaussian", sigma=2.0, description="votes")
"""The DP event the release tests record."""


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_tenant(session: Session, name: str = "acme") -> str:
    return create_tenant(session, name).id


def digests_of(records: Iterable[str], duplicates: int = 0) -> RecordDigests:
    """Stand-ins for the keyed digests of ``records`` (the database only compares them)."""
    distinct = sorted({hashlib.sha256(record.encode()).digest() for record in records})
    return RecordDigests(b"".join(distinct), duplicates)


def new_dataset(
    session: Session,
    tenant_id: str,
    *,
    data: str = "digits",
    records: Iterable[str] | None = None,
    epsilon_cap: float = 1.0,
    delta_cap: float = 1e-5,
    user_column: str | None = None,
    role: str = "private",
) -> Dataset:
    """A dataset whose file is ``data``, holding ``records`` (None: no record digests, as
    datasets uploaded before they existed); user-level with a ``user_column``; held-out (no
    budget, no caps) with ``role="heldout"``."""
    heldout = role == "heldout"
    return create_dataset(
        session,
        tenant_id,
        name=data,
        modality="image",
        record_count=600,
        labels=[str(c) for c in range(10)],
        sha256=sha256_of(data),
        storage_path=f"datasets/{data}.npz",
        epsilon_cap=None if heldout else epsilon_cap,
        delta_cap=None if heldout else delta_cap,
        digests=None if records is None else digests_of(records),
        user_column=user_column,
        role=role,
    )


def run_together(
    factory: sessionmaker[Session], count: int, work: Callable[[Session, int], T]
) -> list[T | Exception]:
    """Runs ``work(session, index)`` in ``count`` threads, each with its own session, released
    at the same instant; returns each call's result or the exception it raised."""
    barrier = threading.Barrier(count)

    def one(index: int) -> T | Exception:
        with factory() as session:
            barrier.wait()
            try:
                return work(session, index)
            except Exception as exc:
                return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def silence(session: Session, job_id: str, seconds: float) -> None:
    """Moves a job's last heartbeat ``seconds`` into the past, as if its worker had died then."""
    with write_transaction(session):
        session.get_one(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=seconds)
