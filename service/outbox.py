"""Delivering the job outbox: pending broker messages, from the database to the broker.

A job's message is committed with its reservation (:mod:`service.db.outbox`); a
:class:`Courier` sends it. The gateway runs one in a :class:`Periodic` thread that a new job
wakes at once and that also polls, so a message whose first send failed (the broker down, the
gateway killed) goes out when the broker is back, and every worker's sweeper runs one too
(:mod:`workers.sweeper`), so messages go out even while no gateway runs. Requests never wait
for the broker: a create answers 202 once its reservation (and message) are committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy.orm import Session, sessionmaker

from service.broker import MessageFinder
from service.db import outbox

logger = logging.getLogger(__name__)

Send = Callable[[str, str, str], None]
"""Sends the task of a job, once: (job id, queue, task id); raises if the broker refused."""

DELIVER_INTERVAL_S: Final = 2.0
"""Seconds between the gateway's looks for messages left pending (by a failed send, or a
process that died); a new job wakes it at once."""


class BrokerRefused(Exception):
    """The broker did not take a message; the rest of the batch was given back."""


@dataclass(frozen=True)
class Courier:
    """Sends pending messages of the outbox and marks them sent.

    Attributes:
        sessions: sessions on the service database.
        send: sends one message (:func:`service.broker.send_job` on an app).
        finder: where the broker's job messages are, to look before sending a message an
            earlier send may have delivered already; None sends it again.
    """

    sessions: sessionmaker[Session]
    send: Send
    finder: MessageFinder | None = None

    def deliver(self, *, limit: int = 100) -> int:
        """Sends up to ``limit`` pending messages no other deliverer holds; returns how many.

        Raises:
            BrokerRefused: the broker refused one; it and the rest stay pending.
        """
        with self.sessions() as session:
            claimed = outbox.claim_outgoing(session, limit=limit)
        for done, message in enumerate(claimed):
            try:
                self.send_claimed(message)
            except BrokerRefused:
                with self.sessions() as session:
                    outbox.unclaim(session, claimed[done:])
                raise
        return len(claimed)

    def send_claimed(self, message: outbox.Outgoing) -> None:
        """Sends one claimed message, unless an earlier send of it reached the broker, and
        marks it sent.

        Raises:
            BrokerRefused: the broker (or the look for the message) failed.
        """
        try:
            if not (message.attempts and self._held(message)):
                self.send(message.job_id, message.queue, message.task_id)
        except Exception as exc:  # kombu and redis raise their own error types
            logger.warning(
                "job %s: the broker did not take its message (%s); it stays in the outbox",
                message.job_id,
                type(exc).__name__,
            )
            raise BrokerRefused(type(exc).__name__) from exc
        with self.sessions() as session:
            outbox.mark_sent(session, message)

    def _held(self, message: outbox.Outgoing) -> bool:
        if self.finder is None:
            return False
        return self.finder.locate(message.queue, [message.job_id]).holds(message.job_id)


class Periodic:
    """Runs ``action`` in a daemon thread every ``interval_s`` seconds, or at once when woken,
    from :meth:`start` until :meth:`stop`. An exception of one run is logged (by type only)
    and the next run goes ahead: the database or broker may be back by then.
    """

    def __init__(self, name: str, action: Callable[[], object], interval_s: float) -> None:
        self.name = name
        self.action = action
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.action()
            except Exception as exc:
                logger.warning("%s failed with %s", self.name, type(exc).__name__)
            self._wake.wait(self.interval_s)


def deliver_pending(courier: Courier) -> None:
    """Sends every pending message, in batches, while there are any (the gateway's loop)."""
    with courier.sessions() as session:
        if not outbox.has_outgoing(session):
            return
    while courier.deliver() > 0:
        pass
