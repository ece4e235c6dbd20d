"""The stale-job sweeper: re-enqueues running jobs whose worker died.

A worker that dies mid-job (killed, out of memory, its machine lost) leaves the job ``running``
with its message unacknowledged. Redis hands such a message out again only after the visibility
timeout, which must outlast the longest job (about 25 h by default), and the embedded
filesystem broker never does. Instead, every running job has a heartbeat (renewed at each phase
and by a thread in between, see :func:`workers.jobs.heartbeat`), and every worker runs a
:class:`Sweeper` that periodically claims the running jobs whose heartbeat is older than
``PRIVEVO_STALE_AFTER_S`` (:func:`service.db.requeue_stale_jobs`) and sends their task again.

Re-enqueueing cannot run a job twice or release anything twice: a delivery runs only while it
holds the job's file lock (a job whose worker is merely slow keeps it, and the extra delivery
stops at once), and each release is recorded exactly once in the database. Claiming is
idempotent: it renews the heartbeat in the same transaction, so concurrent or repeated sweeps
send a stale job's task once per threshold.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from service.db import requeue_stale_jobs

logger = logging.getLogger(__name__)

Enqueue = Callable[[str, str], None]
"""Sends the task of a job: (job id, queue)."""


def sweep(sessions: sessionmaker[Session], enqueue: Enqueue, *, stale_after_s: float) -> list[str]:
    """Re-enqueues the running jobs whose heartbeat is older than ``stale_after_s``.

    Returns:
        The ids of the jobs re-enqueued.
    """
    with sessions() as session:
        stale = requeue_stale_jobs(session, stale_after_s=stale_after_s)
    for job in stale:
        logger.warning(
            "job %s: no heartbeat for over %g s, its worker is taken for dead; re-enqueued",
            job.id,
            stale_after_s,
        )
        enqueue(job.id, job.queue)
    return [job.id for job in stale]


class Sweeper:
    """Runs :func:`sweep` every ``interval_s`` seconds in a daemon thread, from :meth:`start`
    until :meth:`stop`.

    Args:
        sessions: sessions on the service database.
        enqueue: sends a job's task.
        interval_s: seconds between sweeps (``PRIVEVO_SWEEP_INTERVAL_S``).
        stale_after_s: the heartbeat age past which a running job is re-enqueued
            (``PRIVEVO_STALE_AFTER_S``).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        enqueue: Enqueue,
        *,
        interval_s: float,
        stale_after_s: float,
    ) -> None:
        self.sessions = sessions
        self.enqueue = enqueue
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stale-job-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                sweep(self.sessions, self.enqueue, stale_after_s=self.stale_after_s)
            except Exception as exc:  # the database or broker may be back at the next sweep
                logger.warning("stale-job sweep failed with %s", type(exc).__name__)
            if self._stop.wait(self.interval_s):
                return
