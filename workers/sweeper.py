"""The stale-job sweeper: sends again the jobs whose message is lost, and only those.

Every worker runs a :class:`Sweeper`. Each sweep first sends the outbox's pending messages
(:class:`service.outbox.Courier`: jobs whose first send failed, or whose sender died), then
looks for the messages of the jobs that should have one and may not:

* queued jobs whose message was sent over a sweep interval ago: waiting in the queue (the
  usual case: every worker is busy), or taken by a worker that is about to start them, or lost
  (a Redis restarted without persistence; a worker killed after taking the message and before
  marking the job running);
* running jobs whose heartbeat is older than ``PRIVEVO_STALE_AFTER_S`` (the worker renews it
  at each phase and by a thread in between, :func:`workers.jobs.heartbeat`): their worker died,
  or their replacement message waits in the queue for a free worker.

A job's message is taken for lost, and replaced by a new one (a new generation in the outbox,
:func:`service.db.outbox.replace_message`), only when the broker proves it:

* it is in neither the queue nor a worker's hands at two looks at least half a sweep interval
  apart (a single look may fall in the instant between a worker taking it and the broker
  recording that, or the worker marking the job running); or
* a worker took it over ``stale_after_s`` ago (or, for a retry, that long after its ETA) and
  the job shows no sign of life: not running, or running with a stale heartbeat. The dead
  worker's unacknowledged copy is then dropped, so Redis never hands it out too.

So a job waiting in a long queue gets no second message, and a job gets one again only when it
has none. Redis's own redelivery (after the visibility timeout, which must outlast the longest
job) would come a day late; the file-system broker has none.

Sending a job twice would still be safe (a delivery runs only while it holds the job's lease,
and each release is recorded exactly once), but it is wasted work and used to happen:
the sweeper sent again jobs whose earlier message was still waiting in the queue.

One look per interval: :meth:`~service.broker.MessageFinder.claim_sweep` lets one worker of
those sharing a Redis read the queue per interval, however many workers there are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import groupby
from typing import Final

from sqlalchemy.orm import Session, sessionmaker

from service.broker import MessageFinder, Whereabouts
from service.db import outbox
from service.db.models import utcnow
from service.outbox import BrokerRefused, Courier, Periodic

logger = logging.getLogger(__name__)

QUEUED_LOST: Final = "message lost"
"""A queued job's message is in neither the queue nor a worker's hands."""
TAKEN_BY_DEAD_WORKER: Final = "worker lost before starting the job"
"""A worker took a queued job's message long ago and never marked the job running."""
RUNNING_LOST: Final = "worker lost"
"""A running job's heartbeat stopped and its message is gone or in a dead worker's hands."""


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did.

    Attributes:
        delivered: pending outbox messages sent.
        checked: sent messages looked for in the broker (0 when another worker looked).
        requeued: the jobs given a new message, with why.
    """

    delivered: int
    checked: int
    requeued: tuple[tuple[str, str], ...]


def sweep(
    sessions: sessionmaker[Session],
    courier: Courier,
    finder: MessageFinder,
    *,
    interval_s: float,
    stale_after_s: float,
) -> SweepReport:
    """One sweep (see the module's docstring)."""
    delivered = courier.deliver()
    if not finder.claim_sweep(interval_s):
        return SweepReport(delivered, 0, ())
    with sessions() as session:
        watched = outbox.messages_to_check(
            session, waited_s=interval_s, stale_after_s=stale_after_s
        )
    found: list[outbox.Watched] = []
    missing: list[outbox.Watched] = []
    lost: list[tuple[outbox.Watched, str, bool]] = []
    confirm = timedelta(seconds=interval_s / 2)
    for queue, group in groupby(sorted(watched, key=lambda w: w.queue), key=lambda w: w.queue):
        jobs = list(group)
        where = finder.locate(queue, [w.job_id for w in jobs])
        now, clock = utcnow(), time.time()
        for w in jobs:
            verdict = _verdict(w, where, clock=clock, stale_after_s=stale_after_s)
            if verdict == "found":
                found.append(w)
            elif verdict == "dead":
                reason = RUNNING_LOST if w.job_status == "running" else TAKEN_BY_DEAD_WORKER
                lost.append((w, reason, True))
            elif verdict == "absent":
                if w.missing_since is not None and now - w.missing_since >= confirm:
                    reason = RUNNING_LOST if w.job_status == "running" else QUEUED_LOST
                    lost.append((w, reason, False))
                else:
                    missing.append(w)
    with sessions() as session:
        outbox.note_whereabouts(session, found=found, missing=missing)
    requeued = _requeue(sessions, courier, finder, lost, stale_after_s=stale_after_s)
    return SweepReport(delivered, len(watched), requeued)


def _verdict(w: outbox.Watched, where: Whereabouts, *, clock: float, stale_after_s: float) -> str:
    """ "found", "dead" (in a dead worker's hands), "absent", or "unknown" (not looked at)."""
    if w.job_id in where.waiting:
        return "found"
    if w.job_id in where.taken:
        return "dead" if clock - where.taken[w.job_id] > stale_after_s else "found"
    return "absent" if where.complete else "unknown"


def _requeue(
    sessions: sessionmaker[Session],
    courier: Courier,
    finder: MessageFinder,
    lost: Sequence[tuple[outbox.Watched, str, bool]],
    *,
    stale_after_s: float,
) -> tuple[tuple[str, str], ...]:
    requeued: list[tuple[str, str]] = []
    replacements: list[outbox.Outgoing] = []
    for watched, reason, taken in lost:
        with sessions() as session:
            message = outbox.replace_message(
                session, watched, reason=reason, stale_after_s=stale_after_s
            )
        if message is None:
            continue  # the job moved on, or another sweep replaced it
        logger.warning("job %s: %s; sent again as %s", watched.job_id, reason, message.task_id)
        if taken:
            finder.drop_taken([watched.job_id])
        requeued.append((watched.job_id, reason))
        replacements.append(message)
    for done, message in enumerate(replacements):
        try:
            courier.send_claimed(message)
        except BrokerRefused:
            # Committed to the outbox: the next deliverer sends them once the broker is back.
            with sessions() as session:
                outbox.unclaim(session, replacements[done:])
            break
    return tuple(requeued)


class Sweeper(Periodic):
    """Runs :func:`sweep` every ``interval_s`` seconds in a daemon thread, from :meth:`start`
    until :meth:`stop`.

    Args:
        sessions: sessions on the service database.
        courier: sends the outbox's messages (through the worker's app).
        finder: finds job messages in the worker's broker.
        interval_s: seconds between sweeps (``PRIVEVO_SWEEP_INTERVAL_S``).
        stale_after_s: the heartbeat age past which a running job's worker may be dead
            (``PRIVEVO_STALE_AFTER_S``).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        courier: Courier,
        finder: MessageFinder,
        *,
        interval_s: float,
        stale_after_s: float,
    ) -> None:
        super().__init__(
            "stale-job-sweeper",
            lambda: sweep(
                sessions, courier, finder, interval_s=interval_s, stale_after_s=stale_after_s
            ),
            interval_s,
        )
