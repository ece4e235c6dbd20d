"""The Celery task that runs a PE job: a thin shell around :func:`workers.jobs.run_job`, and
the stale-job sweeper every worker runs beside it (:mod:`workers.sweeper`).

The gateway creates the job with :func:`service.db.reserve`, then sends this task by name
(:func:`workers.celery_app.send_job`); the message carries the job id only.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from service.db import finalize, make_engine, make_session_factory
from service.storage import LocalStorage
from workers import jobs
from workers.celery_app import app, send_job, settings
from workers.sweeper import Sweeper

logger = get_task_logger(__name__)

# Retries after a database outage: 10 s, 20 s, ... 160 s, about 5 minutes in all.
DB_RETRIES: Final = 5
DB_RETRY_FIRST_S: Final = 10


@functools.cache
def job_context() -> jobs.JobContext:
    """The database and storage of this worker process, opened on its first job.

    Opened lazily so that each pool process (forked after import) makes its own connections.
    """
    engine = make_engine(settings.resolved_database_url)
    storage = LocalStorage(settings.resolved_storage_root)
    return jobs.JobContext(
        make_session_factory(engine),
        storage,
        time_limit_s=settings.task_time_limit_s,
        heartbeat_s=settings.heartbeat_interval_s,
    )


@functools.cache
def sweeper() -> Sweeper:
    """This worker's stale-job sweeper, sending through the worker's own app.

    Its engine keeps no connection between sweeps, so pool processes forked after it starts
    (prefork replaces them) inherit none.
    """
    engine = make_engine(settings.resolved_database_url, poolclass=NullPool)
    return Sweeper(
        make_session_factory(engine),
        lambda job_id, spec: send_job(app, job_id, spec),
        interval_s=settings.sweep_interval_s,
        stale_after_s=settings.stale_after_s,
    )


@worker_ready.connect
def _start_sweeper(sender: Any, **_: Any) -> None:
    # Sent once, in the main worker process, when it is ready to consume.
    sweeper().start()


@worker_shutdown.connect
def _stop_sweeper(sender: Any, **_: Any) -> None:
    sweeper().stop()


@app.task(bind=True, name="workers.tasks.run_job", max_retries=DB_RETRIES)
def run_job(self: Task, job_id: str) -> str:
    """Runs (or resumes) the job ``job_id``; returns its final status (see ``jobs.run_job``)."""
    context = job_context()
    try:
        return jobs.run_job(context, job_id, timeouts=(SoftTimeLimitExceeded,))
    except OperationalError as exc:
        retries = self.request.retries
        if retries < DB_RETRIES:
            logger.warning("job %s: database unavailable (%s); retry", job_id, type(exc).__name__)
            raise self.retry(countdown=DB_RETRY_FIRST_S * 2**retries) from None
        logger.error("job %s: database unavailable after %d retries", job_id, retries)
        with context.sessions() as session:
            finalize(session, job_id, "failed", jobs.INTERNAL_ERROR)
        raise
