"""Rows of ``shards``: opening, claiming and finishing the shards of a job's work fanned out over
workers (:mod:`workers.fanout`): in each iteration the vote (``step`` :data:`VOTE`) and the
generation calls (steps 1, 2, ...). A shard is claimed by one worker at a time; a claim whose
holder stops renewing it is taken over, and a shard nobody claimed is taken by the coordinator
itself."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.engine import read_transaction, write_transaction
from service.db.models import Shard, utcnow

VOTE: Final = 0
"""The step of an iteration's vote; its generation calls are steps 1, 2, ..."""


def open_shards(
    session: Session,
    job_id: str,
    iteration: int,
    shards: int,
    synthetic_sha256: str,
    *,
    step: int = VOTE,
) -> None:
    """Makes the rows of the ``shards`` shards of ``iteration``, keeping those already made for
    the same synthetic set (a redelivered coordinator reuses their work) and replacing any made
    for another."""
    with write_transaction(session):
        rows = _rows(session, job_id, iteration, step, lock=True)
        if any(row.synthetic_sha256 != synthetic_sha256 or row.shards != shards for row in rows):
            session.execute(
                delete(Shard).where(
                    Shard.job_id == job_id, Shard.iteration == iteration, Shard.step == step
                )
            )
            session.flush()
            rows = []
        have = {row.shard for row in rows}
        for shard in range(shards):
            if shard not in have:
                session.add(
                    Shard(
                        job_id=job_id,
                        iteration=iteration,
                        step=step,
                        shard=shard,
                        shards=shards,
                        synthetic_sha256=synthetic_sha256,
                    )
                )


def claim_shard(
    session: Session,
    job_id: str,
    iteration: int,
    shard: int,
    worker: str,
    *,
    stale_before: datetime,
    unclaimed_since: datetime | None = None,
    step: int = VOTE,
    gone: Callable[[str], bool] = lambda holder: False,
) -> Shard | None:
    """Claims a shard that is not done for ``worker``; returns the claimed row, or None.

    A shard can be claimed when nobody holds it, or when its holder last renewed the claim
    before ``stale_before`` or ``gone(holder)`` says its process has exited (the holder is
    taken for dead and its work is redone; a late result of the same work is the same). With
    ``unclaimed_since``, an unclaimed shard is claimed only if it was opened before then: the
    coordinator leaves fresh shards to the workers their messages went to for that long.
    """
    with write_transaction(session):
        row = _row(session, job_id, iteration, step, shard)
        if row is None or row.done_at is not None:
            return None
        if row.claimed_at is not None:
            assert row.claimed_by is not None
            if row.claimed_at >= stale_before and not gone(row.claimed_by):
                return None
        elif unclaimed_since is not None and row.opened_at >= unclaimed_since:
            return None
        row.claimed_by, row.claimed_at = worker, utcnow()
        return row


def renew_claim(
    session: Session, job_id: str, iteration: int, shard: int, worker: str, *, step: int = VOTE
) -> bool:
    """Shows that ``worker`` is still working on its shard; False if it no longer holds it."""
    with write_transaction(session):
        row = _row(session, job_id, iteration, step, shard)
        if row is None or row.done_at is not None or row.claimed_by != worker:
            return False
        row.claimed_at = utcnow()
        return True


def release_claim(
    session: Session, job_id: str, iteration: int, shard: int, worker: str, *, step: int = VOTE
) -> None:
    """Gives up ``worker``'s claim (it failed), so the coordinator may take the shard at once."""
    with write_transaction(session):
        row = _row(session, job_id, iteration, step, shard)
        if row is not None and row.done_at is None and row.claimed_by == worker:
            row.claimed_by = row.claimed_at = None


def finish_shard(
    session: Session,
    job_id: str,
    iteration: int,
    shard: int,
    synthetic_sha256: str,
    *,
    partial: str,
    backend: str | None,
    step: int = VOTE,
) -> bool:
    """Marks the shard done with the partial stored under the token ``partial``; False if it
    was done already, or its row is gone or now counts another synthetic set (that partial is
    then not the one read, and its writer deletes it)."""
    with write_transaction(session):
        row = _row(session, job_id, iteration, step, shard)
        if row is None or row.done_at is not None or row.synthetic_sha256 != synthetic_sha256:
            return False
        row.done_at, row.partial, row.backend = utcnow(), partial, backend
        return True


def shard_rows(session: Session, job_id: str, iteration: int, *, step: int = VOTE) -> list[Shard]:
    """The shards of ``step`` of ``iteration``, by shard number (detached snapshots)."""
    with read_transaction(session):
        return _rows(session, job_id, iteration, step, lock=False)


def _row(session: Session, job_id: str, iteration: int, step: int, shard: int) -> Shard | None:
    return session.scalars(
        select(Shard)
        .where(
            Shard.job_id == job_id,
            Shard.iteration == iteration,
            Shard.step == step,
            Shard.shard == shard,
        )
        .with_for_update()
    ).one_or_none()


def _rows(session: Session, job_id: str, iteration: int, step: int, *, lock: bool) -> list[Shard]:
    statement = (
        select(Shard)
        .where(Shard.job_id == job_id, Shard.iteration == iteration, Shard.step == step)
        .order_by(Shard.shard)
    )
    return list(session.scalars(statement.with_for_update() if lock else statement))
