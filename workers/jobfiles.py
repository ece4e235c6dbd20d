"""A job's files on a worker that shares no disk with the others: kept in the storage.

The engine works on files (checkpoints, the noisy release vectors, the run record, the output
layout). With a storage apart from the worker's local work folder (S3, or encryption at rest),
:class:`JobFiles` makes the storage the one place a job's files live between deliveries, so
that a job stopped on one worker resumes on any other:

* :meth:`JobFiles.restore`, when a delivery has taken the job's lease, replaces the local job
  folder by what the storage holds under the job's prefix (``state/`` with its latest
  checkpoint, and ``out/``; the fan-out's ``votes/`` and ``generate/`` are not the engine's);
* :meth:`JobFiles.save`, after the run record is written and at every phase and iteration,
  copies the files that are new or changed since the last save to the storage, JSON files last:
  a checkpoint's JSON names its npz's digest, so a checkpoint whose JSON is stored is whole.
  The noisy vectors are stored by the ledger itself before their release is recorded
  (:class:`workers.ledger.DbLedger`), since a later delivery must find every recorded release;
* :meth:`JobFiles.remove`, when the delivery ends however it ends, deletes the local folder:
  no private file stays on the worker's disk, and the stored copy is encrypted with the
  dataset's key where encryption is on, and deleted with the dataset.

A delivery killed between two saves loses only what the next delivery makes again: everything
after the last stored checkpoint, and at most the sample picture of the iteration it was in.
A save finds the dataset deleted (by its owner, or expired) and stops the job: the purge deleted
the job's stored files, and a save must not make them again.

A worker killed mid-job cannot delete its local copy; every worker's main process therefore
deletes, once per sweep interval, the job folders of its work folder that no live delivery holds
(:func:`clear_orphans`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pe_core.errors import PrivevoError
from pe_core.fileio import atomic_write_bytes, private_directory
from pe_core.runner import CHECKPOINTS
from service.db import Job, dataset_is_live, read_transaction
from service.storage import Storage
from workers.lease import is_gone

logger = logging.getLogger(__name__)

FANNED_OUT: tuple[str, ...] = ("votes", "generate")
"""Top-level folders of a job's prefix that are not the engine's files but a fan-out's, which
writes them to the storage itself (:mod:`workers.fanout`, :mod:`workers.chunks`)."""


class DatasetDeleted(PrivevoError):
    """The job's dataset was deleted while the job ran."""


class JobFiles:
    """The files of one job under ``folder``, kept in ``storage`` under ``prefix``.

    Args:
        sessions: sessions on the service database (to see whether the dataset still exists).
        storage: the storage the files are kept in.
        prefix: the job's storage prefix (``service.keys.job_prefix``).
        folder: the job's local folder in the worker's work folder.
        dataset_id: the job's dataset.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage: Storage,
        prefix: str,
        folder: Path,
        dataset_id: str,
    ) -> None:
        self.sessions = sessions
        self.storage = storage
        self.prefix = prefix
        self.folder = folder
        self.dataset_id = dataset_id
        self._saved: dict[Path, tuple[int, int]] = {}

    def restore(self) -> None:
        """Replaces the local folder by the stored files (none for a job that never ran), of
        the checkpoints the latest complete one only: a run resumes from that one alone."""
        self.remove()
        private_directory(self.folder)
        found = {}
        for key in self.storage.list(self.prefix):
            relative = key.removeprefix(f"{self.prefix}/")
            if relative != key and relative.split("/", 1)[0] not in FANNED_OUT:
                found[relative] = key  # not another job whose id starts with this one's
        checkpoints = f"state/{CHECKPOINTS}/"
        complete = sorted(
            name for name in found if name.startswith(checkpoints) and name.endswith(".json")
        )
        older = {name.removesuffix(".json") for name in complete[:-1]}
        for relative, key in found.items():
            if relative.rsplit(".", 1)[0] in older:
                continue
            path = self.folder.joinpath(*relative.split("/"))
            private_directory(path.parent)
            with self.storage.open_read(key) as handle:
                atomic_write_bytes(path, handle.read())
            self._saved[path] = _stamp(path)

    def save(self) -> None:
        """Copies the files made or changed since the last save (and not being written, whose
        names start with '.') to the storage, JSON files last.

        Raises:
            DatasetDeleted: the dataset was deleted: nothing is copied.
        """
        changed = [
            path
            for path in sorted(self.folder.rglob("*"), key=lambda p: (p.suffix == ".json", p))
            if path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(self.folder).parts)
            and self._saved.get(path) != _stamp(path)
        ]
        if not changed:
            return
        with self.sessions() as session:
            if not dataset_is_live(session, self.dataset_id):
                raise DatasetDeleted(
                    "the job's dataset was deleted while the job ran, so the job stopped; its "
                    "files were deleted with the dataset"
                )
        for path in changed:
            stamp = _stamp(path)
            key = f"{self.prefix}/{path.relative_to(self.folder).as_posix()}"
            with path.open("rb") as source, self.storage.open_write(key) as target:
                shutil.copyfileobj(source, target)
            self._saved[path] = stamp

    def remove(self) -> None:
        """Deletes the local folder."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._saved.clear()

    # The engine's progress callbacks (pe_core.runner.RunCallbacks): a save at every step.
    def on_phase(self, iteration: int, phase: str) -> None:
        self.save()

    def on_iteration(self, report: object) -> None:
        self.save()


def clear_orphans(sessions: sessionmaker[Session], root: Path, *, idle_s: float) -> list[str]:
    """Deletes the job folders in the work folder ``root`` that no live delivery can be using:
    untouched for ``idle_s`` seconds (a delivery restoring into a folder touches it), and of a
    job whose lease is released, or held by a process of this machine that has exited
    (:func:`workers.lease.is_gone`). Returns the ids of the jobs whose folders it deleted.
    """
    folders = {folder.name: folder for folder in root.glob("datasets/*/jobs/*") if folder.is_dir()}
    if not folders:
        return []
    with sessions() as session, read_transaction(session):
        statement = select(Job.id, Job.lease_holder).where(Job.id.in_(folders))
        holders = {job_id: holder for job_id, holder in session.execute(statement)}
    idle_since = time.time() - idle_s
    cleared = []
    for job_id, folder in sorted(folders.items()):
        holder = holders.get(job_id)
        if holder is not None and not is_gone(holder):
            continue
        if _last_touched(folder) > idle_since:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        cleared.append(job_id)
    if cleared:
        logger.warning("deleted the local files of %d job(s) a stopped worker left", len(cleared))
    return cleared


def _last_touched(folder: Path) -> float:
    """The latest modification time in ``folder`` (now, if it changes while it is read)."""
    try:
        return max(path.stat().st_mtime for path in [folder, *folder.rglob("*")])
    except FileNotFoundError:
        return time.time()


def _stamp(path: Path) -> tuple[int, int]:
    """What tells a file changed: its size and modification time in nanoseconds."""
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns
