"""A worker app for tests: the real app, whose process stops itself at a job's first release.

Run as ``celery -A tests.workers.stopping_app worker ...`` with ``PRIVEVO_TEST_STOP_AT`` set to
``before-start`` (the message is taken, the job not yet marked running), ``before-record`` (the
noisy vector is drawn and stored, not yet recorded in the database), ``after-record``
(recorded, not yet used) or ``in-shard`` (a shard of a fanned-out vote is claimed, its votes
not yet counted). The process sends itself SIGSTOP there, so a test can kill it, or
cancel the job and let it go on, at a known point of the run.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from workers import fanout, jobs
from workers.celery_app import worker_app
from workers.ledger import DbLedger

app = worker_app()

STOP_AT = os.environ["PRIVEVO_TEST_STOP_AT"]
_record = DbLedger.append
_start = jobs._run
_count = fanout.count_votes
_stopped = False


def _stop(point: str) -> None:
    global _stopped
    if point == STOP_AT and not _stopped:
        _stopped = True
        os.kill(os.getpid(), signal.SIGSTOP)


def _append(self: DbLedger, entry: Any) -> None:
    _stop("before-record")
    _record(self, entry)
    _stop("after-record")


DbLedger.append = _append  # type: ignore[method-assign]


def _run(*args: Any, **kwargs: Any) -> None:
    _stop("before-start")
    _start(*args, **kwargs)


jobs._run = _run


def _count_votes(*args: Any, **kwargs: Any) -> Any:
    _stop("in-shard")
    return _count(*args, **kwargs)


fanout.count_votes = _count_votes
