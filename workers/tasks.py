"""The Celery task that runs a PE job: a thin shell around :func:`workers.jobs.run_job`.

The gateway creates the job with :func:`service.db.reserve`, then sends this task by name
(``send_task("workers.tasks.run_job", args=[job_id], queue=queue_for(spec))``, or
``run_job.apply_async``); the message carries the job id only.
"""

from __future__ import annotations

import functools
from typing import Final

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from service.db import finalize, make_engine, make_session_factory
from service.storage import LocalStorage
from workers import jobs
from workers.celery_app import app, settings

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
    return jobs.JobContext(make_session_factory(engine), storage)


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
