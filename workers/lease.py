"""Which worker process runs a job: a lease in the database, kept alive by the job's heartbeat.

A job's task may be delivered more than once (a worker died, Redis redelivered, the sweeper sent
it again). Only the delivery holding the job's lease runs it; the others stop at once. The lease
is the job row's ``lease_holder`` (:func:`service.db.take_lease`), so it needs no file system
shared by the workers, which is what lets each worker keep its files to itself
(:mod:`workers.jobfiles`).

A lease ends when its holder releases it, when its heartbeat is older than
``PRIVEVO_STALE_AFTER_S`` (the holder is taken for dead, as the sweeper takes it), or when the
holder is known to be gone: a holder names its machine, PID namespace, process id and the
process's start time (:func:`process_name`), so a delivery in the same PID namespace sees at once
that a killed worker's process no longer exists (:func:`is_gone`), as the kernel used to show
by releasing a dead holder's ``flock``. A holder whose lease was taken over (its heartbeat went
stale while it lived, e.g. a database outage) learns it at its next heartbeat and stops at the
next phase (:class:`LeaseLost`); every release is recorded exactly once whatever happens
(:class:`workers.ledger.DbLedger`), so even two deliveries running at once spend nothing twice.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Final

from sqlalchemy.orm import Session, sessionmaker

from pe_core.errors import PrivevoError
from service.db import beat, release_lease, take_lease
from service.db.models import utcnow

logger = logging.getLogger(__name__)

DELIVERY: Final = "#"
"""Separates a lease holder's process name from the token of its delivery."""


class LeaseLost(PrivevoError):
    """Another delivery took over the job (this one's heartbeat went stale): this one stops."""


class Lease:
    """The lease a delivery holds on its job, renewed by :func:`job_lease`'s thread.

    Attributes:
        job_id: the job.
        holder: this process (:func:`process_name`).
    """

    def __init__(self, job_id: str, holder: str) -> None:
        self.job_id = job_id
        self.holder = holder
        self._lost = threading.Event()

    @property
    def lost(self) -> bool:
        """Whether another delivery has taken the job over (seen at the last heartbeat)."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raises :class:`LeaseLost` once another delivery has taken the job over."""
        if self.lost:
            raise LeaseLost(f"job {self.job_id} was taken over by another delivery")


@contextmanager
def job_lease(
    sessions: sessionmaker[Session], job_id: str, *, stale_after_s: float, every_s: float
) -> Iterator[Lease | None]:
    """Takes the job's lease for this process and renews it every ``every_s`` seconds from a
    thread while the block runs (renewing it is the job's heartbeat); yields the lease, or None
    when another live delivery holds the job. The lease is released when the block ends; a
    process that dies keeps it only until :func:`is_gone` or the stale threshold frees it.

    Raises:
        service.db.NotFound: no such job.
    """
    holder = f"{process_name()}{DELIVERY}{secrets.token_hex(4)}"  # one process, one delivery
    stale_before = utcnow() - timedelta(seconds=stale_after_s)
    with sessions() as session:
        if not take_lease(session, job_id, holder, stale_before=stale_before, gone=is_gone):
            yield None
            return
    lease = Lease(job_id, holder)

    def renew() -> None:
        with sessions() as session:
            if not beat(session, job_id, holder):
                lease._lost.set()

    try:
        with periodically(renew, every_s, f"heartbeat-{job_id}"):
            yield lease
    finally:
        try:
            with sessions() as session:
                release_lease(session, job_id, holder)
        except Exception as exc:  # the lease then goes stale: later deliveries wait that long
            logger.warning("job %s: releasing its lease failed with %s", job_id, type(exc).__name__)


@contextmanager
def periodically(renew: Callable[[], object], every_s: float, name: str) -> Iterator[None]:
    """Calls ``renew`` every ``every_s`` seconds from a daemon thread while the block runs; a
    failed call is logged (by its exception type) and the next one tries again."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            try:
                renew()
            except Exception as exc:  # the next call retries; the work itself must go on
                logger.warning("%s failed with %s", name, type(exc).__name__)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def process_name() -> str:
    """This process, as ``host/boot id/PID namespace/pid/start time`` (the namespace parts are
    empty where ``/proc`` does not show them, and such a holder is never taken for gone)."""
    pid = os.getpid()
    return "/".join((socket.gethostname(), *_namespace(), str(pid), _start_time(pid) or ""))


def is_gone(holder: str) -> bool:
    """Whether ``holder`` (a :func:`process_name`, with a delivery's token) is known to have
    exited: it ran in this PID namespace, and no process with its pid and start time exists. A
    holder elsewhere is never known to be gone: only its stale heartbeat frees its lease."""
    *where, pid, started = holder.partition(DELIVERY)[0].split("/")
    here = [socket.gethostname(), *_namespace()]
    if where != here or not all(here) or not pid.isdigit() or not started:
        return False
    return _start_time(int(pid)) != started


@functools.cache
def _namespace() -> tuple[str, str]:
    """This machine's boot id and this process's PID namespace, or empty strings."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "", ""
    return boot, namespace.removeprefix("pid:[").removesuffix("]")


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``'s 22nd
    field), or None when there is no such process (or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count after its end.
    return stat[stat.rindex(")") + 2 :].split()[19]
