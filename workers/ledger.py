"""The engine's release ledger for one job, kept in the service database.

:class:`DbLedger` implements :class:`pe_core.privacy.Ledger` on top of
:func:`service.db.record_release`, whose unique ``(job, iteration, mechanism)`` key makes each
release happen once however often the job's task is delivered. The engine's release key
("iteration-3/histogram", "label-counts") is the row's ``mechanism``; the row also holds the
release's :class:`~pe_core.privacy.DpEvent`, so the ledger (and the job's epsilon) can be rebuilt
from the database alone.

Used as ``ReleaseStore(DbLedger(...), directory)`` (which :class:`pe_core.runner.PrivateEvolution`
builds from its ``ledger`` argument), the noisy vectors are files in ``directory`` and the rows
point at them. The release store names a key's file after the key alone, so two deliveries of
one job racing on a key would write the same file; the ledger therefore copies each vector it
records to a name of its own that includes the vector's sha256, and the row points at that copy,
which no later draw can overwrite. A delivery that loses the insert gets
:class:`~pe_core.privacy.DuplicateReleaseError`: its own draw was never used, and its task
resumes the run, which then reads the recorded vector (see :mod:`workers.jobs`).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pe_core.fileio import atomic_write_bytes
from pe_core.privacy import (
    DpEvent,
    DuplicateReleaseError,
    LedgerEntry,
    LedgerError,
    epsilon_for,
    release_digest,
)
from service.db import Release, read_transaction, record_release
from service.storage import Storage


class DbLedger:
    """The release ledger of one job, in the ``releases`` table.

    Each recorded release's ``epsilon`` is what it adds to the job's composed epsilon:
    ``max(0, epsilon_for(all events so far, delta) - epsilon already recorded)``, so a job's
    release epsilons sum to the accountant's epsilon of everything it released (see
    :mod:`service.db.budget`).

    Args:
        sessions: makes sessions on the service database (``service.db.make_session_factory``).
        job_id: the job whose releases this ledger holds.
        delta: the job's (reserved) delta, at which epsilon is accounted.
        directory: the release store's folder, where the vectors are files.
        key_prefix: the storage key of ``directory``; rows record the storage key of each
            vector (``<key_prefix>/<file>``).
        storage: where each kept vector is also stored, before its row is recorded, when
            ``directory`` is a worker's local copy (:mod:`workers.jobfiles`): a later delivery
            on another worker must find every recorded release. None when ``directory`` is in
            the storage itself.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        *,
        delta: float,
        directory: Path,
        key_prefix: str,
        storage: Storage | None = None,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.delta = delta
        self.directory = Path(directory)
        self.key_prefix = key_prefix.rstrip("/")
        self.storage = storage

    def entries(self) -> list[LedgerEntry]:
        return [self._entry(row) for row in self._rows()]

    def get(self, key: str) -> LedgerEntry | None:
        row = next((row for row in self._rows() if row.mechanism == key), None)
        return None if row is None else self._entry(row)

    def append(self, entry: LedgerEntry) -> None:
        """Records ``entry`` unless this job recorded ``entry.key`` already.

        Raises:
            DuplicateReleaseError: ``entry.key`` is recorded with another vector, or another
                delivery replaced this one's file: this draw must not be used.
            service.db.JobFinished: the job is final (e.g. canceled): nothing may be released.
        """
        path = None if entry.release_path is None else self._keep(entry, entry.release_path)
        rows = self._rows()
        recorded = next((row for row in rows if row.mechanism == entry.key), None)
        if recorded is None:
            events = [self._entry(row).event for row in rows] + [entry.event]
            prior = sum(row.epsilon for row in rows)
            epsilon = max(0.0, epsilon_for(events, self.delta) - prior)
            with self.sessions() as session:
                recorded, _ = record_release(
                    session,
                    self.job_id,
                    entry.iteration,
                    entry.key,
                    epsilon,
                    entry.release_sha256,
                    path,
                    event=entry.event,
                )
        if recorded.sha256 != entry.release_sha256:
            raise DuplicateReleaseError(
                f"release {entry.key!r} of job {self.job_id} was recorded by another delivery "
                "of the job; resume the run to use the recorded release"
            )

    def _rows(self) -> list[Release]:
        statement = select(Release).where(Release.job_id == self.job_id).order_by(Release.id)
        with self.sessions() as session, read_transaction(session):
            return list(session.scalars(statement))

    def _entry(self, row: Release) -> LedgerEntry:
        if row.event is None:
            raise LedgerError(
                f"release {row.mechanism!r} of job {self.job_id} was recorded without its DP "
                "event, so the job's privacy loss cannot be accounted"
            )
        path = None
        if row.storage_path is not None:
            stored = PurePosixPath(row.storage_path)
            if str(stored.parent) != self.key_prefix:
                raise LedgerError(
                    f"release {row.mechanism!r} of job {self.job_id} is stored at "
                    f"{row.storage_path!r}, outside this job's release folder {self.key_prefix!r}"
                )
            path = stored.name
        return LedgerEntry(
            key=row.mechanism,
            iteration=row.iteration,
            event=DpEvent(**row.event),
            release_sha256=row.sha256,
            release_path=path,
        )

    def _keep(self, entry: LedgerEntry, file: str) -> str:
        """Copies the entry's vector, stored in ``file``, to a file named after its sha256.

        Returns:
            The storage key of the copy.

        Raises:
            DuplicateReleaseError: ``file`` no longer holds this entry's vector.
        """
        data = (self.directory / file).read_bytes()
        if _digest(data) != entry.release_sha256:
            raise DuplicateReleaseError(
                f"release {entry.key!r} of job {self.job_id}: another delivery of the job "
                "replaced this draw before it was recorded; resume the run"
            )
        name = f"{PurePosixPath(file).stem}.{entry.release_sha256}.npz"
        kept = self.directory / name
        if not kept.exists():
            atomic_write_bytes(kept, data)
        key = f"{self.key_prefix}/{name}"
        if self.storage is not None:
            with self.storage.open_write(key) as handle:
                handle.write(data)
        return key


def _digest(data: bytes) -> str | None:
    """The release digest of a stored vector, or None when the file is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return release_digest(np.asarray(npz["values"], dtype=np.int64))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
