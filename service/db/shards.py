"""Rows of ``vote_shards``: opening, claiming and finishing the shards of a fanned-out vote
(:mod:`workers.fanout`). A shard is claimed by one worker at a time; a claim whose holder stops
renewing it is taken over, and a shard nobody claimed is taken by the coordinator itself."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.engine import read_transaction, write_transaction
from service.db.models import VoteShard, utcnow


def open_shards(
    session: Session, job_id: str, iteration: int, shards: int, synthetic_sha256: str
) -> None:
    """Makes the rows of the ``shards`` shards of ``iteration``, keeping those already made for
    the same synthetic set (a redelivered coordinator reuses their work) and replacing any made
    for another."""
    with write_transaction(session):
        rows = _rows(session, job_id, iteration, lock=True)
        if any(row.synthetic_sha256 != synthetic_sha256 or row.shards != shards for row in rows):
            session.execute(
                delete(VoteShard).where(
                    VoteShard.job_id == job_id, VoteShard.iteration == iteration
                )
            )
            session.flush()
            rows = []
        have = {row.shard for row in rows}
        for shard in range(shards):
            if shard not in have:
                session.add(
                    VoteShard(
                        job_id=job_id,
                        iteration=iteration,
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
) -> VoteShard | None:
    """Claims a shard that is not done for ``worker``; returns the claimed row, or None.

    A shard can be claimed when nobody holds it, or when its holder last renewed the claim
    before ``stale_before`` (the holder is taken for dead and its work is redone; a late result
    of the same work is the same partial). With ``unclaimed_since``, an unclaimed shard is
    claimed only if it was opened before then: the coordinator leaves fresh shards to the
    workers their messages went to for that long.
    """
    with write_transaction(session):
        row = _row(session, job_id, iteration, shard)
        if row is None or row.done_at is not None:
            return None
        if row.claimed_at is not None:
            if row.claimed_at >= stale_before:
                return None
        elif unclaimed_since is not None and row.opened_at >= unclaimed_since:
            return None
        row.claimed_by, row.claimed_at = worker, utcnow()
        return row


def renew_claim(session: Session, job_id: str, iteration: int, shard: int, worker: str) -> bool:
    """Shows that ``worker`` is still counting its shard; False if it no longer holds it."""
    with write_transaction(session):
        row = _row(session, job_id, iteration, shard)
        if row is None or row.done_at is not None or row.claimed_by != worker:
            return False
        row.claimed_at = utcnow()
        return True


def release_claim(session: Session, job_id: str, iteration: int, shard: int, worker: str) -> None:
    """Gives up ``worker``'s claim (it failed), so the coordinator may take the shard at once."""
    with write_transaction(session):
        row = _row(session, job_id, iteration, shard)
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
    backend: str,
) -> bool:
    """Marks the shard done with the partial stored under the token ``partial``; False if it
    was done already, or its row is gone or now counts another synthetic set (that partial is
    then not the one read, and its writer deletes it)."""
    with write_transaction(session):
        row = _row(session, job_id, iteration, shard)
        if row is None or row.done_at is not None or row.synthetic_sha256 != synthetic_sha256:
            return False
        row.done_at, row.partial, row.backend = utcnow(), partial, backend
        return True


def shard_rows(session: Session, job_id: str, iteration: int) -> list[VoteShard]:
    """The shards of ``iteration``, by shard number (detached snapshots)."""
    with read_transaction(session):
        return _rows(session, job_id, iteration, lock=False)


def _row(session: Session, job_id: str, iteration: int, shard: int) -> VoteShard | None:
    return session.scalars(
        select(VoteShard)
        .where(
            VoteShard.job_id == job_id,
            VoteShard.iteration == iteration,
            VoteShard.shard == shard,
        )
        .with_for_update()
    ).one_or_none()


def _rows(session: Session, job_id: str, iteration: int, *, lock: bool) -> list[VoteShard]:
    statement = (
        select(VoteShard)
        .where(VoteShard.job_id == job_id, VoteShard.iteration == iteration)
        .order_by(VoteShard.shard)
    )
    return list(session.scalars(statement.with_for_update() if lock else statement))
