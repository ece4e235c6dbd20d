"""The Celery tasks: one that runs a PE job, a thin shell around :func:`workers.jobs.run_job`;
one that counts a shard of a large job's vote (:mod:`workers.fanout`); and what every worker
runs beside them: the stale-job sweeper (:mod:`workers.sweeper`) and, where the work folder is
the worker's own, the sweep of job files a killed delivery left there
(:func:`workers.jobfiles.clear_orphans`).

The gateway creates the job with :func:`service.db.reserve`, which commits its message to the
outbox; a courier sends this task by name to the queue stored on the job row
(:func:`service.broker.send_job`); the message carries the job id only. The task is a shared
task: it belongs to the app of the worker that imports this module
(:func:`workers.celery_app.create_app`), whose settings it runs by.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Final

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from pe_core.apis.llm_backends import register_openai_backend
from service.broker import JOB_TASK, message_finder, send_job
from service.db import finalize, make_engine, make_session_factory
from service.outbox import Courier, Periodic
from service.settings import open_storage
from workers import chunks, fanout, jobs
from workers.celery_app import WorkerApp
from workers.jobfiles import clear_orphans
from workers.sweeper import Sweeper

logger = get_task_logger(__name__)

# Retries after a database outage: 10 s, 20 s, ... 160 s, about 5 minutes in all.
DB_RETRIES: Final = 5
DB_RETRY_FIRST_S: Final = 10


@functools.cache
def job_context(app: WorkerApp) -> jobs.JobContext:
    """The database and storage of this worker process, opened on its first job.

    Opened lazily so that each pool process (forked after import) makes its own connections.
    The llm API's ``openai`` backend gets its key and allowed server from the same settings.

    The process's umask becomes 077 here, before its first job: the engine writes a job's
    checkpoints, noisy releases and outputs into the job's folder with its own file calls, and
    all of it is private data, readable by the service's user only.
    """
    os.umask(0o077)
    settings = app.settings
    register_openai_backend(
        api_key=settings.openai_api_key, allowed_base_url=settings.openai_base_url
    )
    engine = make_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    stores = open_storage(settings, sessions)  # the data keys, with encryption at rest

    def send(task: str, args: tuple[object, ...], queue: str) -> None:
        app.send_task(task, args=list(args), queue=queue)

    return jobs.JobContext(
        sessions,
        stores.storage,
        time_limit_s=settings.task_time_limit_s,
        heartbeat_s=settings.heartbeat_interval_s,
        stale_after_s=settings.stale_after_s,
        policy=settings.policy,
        work=stores.work,
        fanout=fanout.Fanout(
            shard_records=settings.vote_shard_records,
            claim_after_s=settings.vote_claim_after_s,
            stale_after_s=settings.stale_after_s,
            renew_s=settings.heartbeat_interval_s,
            send=send,
            chunk_samples=settings.generation_chunk_samples,
        ),
    )


@functools.cache
def main_sessions(app: WorkerApp) -> sessionmaker[Session]:
    """Sessions for the worker's main process. Its engine keeps no connection between uses, so
    pool processes forked after it starts (prefork replaces them) inherit none."""
    url = app.settings.resolved_database_url
    return make_session_factory(make_engine(url, poolclass=NullPool))


@functools.cache
def sweeper(app: WorkerApp) -> Sweeper:
    """This worker's stale-job sweeper and outbox courier, sending through the worker's app."""
    settings = app.settings
    sessions = main_sessions(app)
    finder = message_finder(app)
    courier = Courier(
        sessions, lambda job_id, queue, task_id: send_job(app, job_id, queue, task_id), finder
    )
    return Sweeper(
        sessions,
        courier,
        finder,
        interval_s=settings.sweep_interval_s,
        stale_after_s=settings.stale_after_s,
    )


@functools.cache
def files_sweeper(app: WorkerApp) -> Periodic | None:
    """Deletes the job folders a killed delivery left in this worker's own work folder, every
    sweep interval; None where the work folder is the storage itself (its job folders are the
    jobs' files)."""
    settings = app.settings
    if not settings.stages_work:
        return None
    sessions, root = main_sessions(app), settings.resolved_storage_root

    def clear() -> None:
        clear_orphans(sessions, root, idle_s=settings.stale_after_s)

    return Periodic("job-files-sweeper", clear, settings.sweep_interval_s)


@worker_ready.connect
def _start_sweeper(sender: Any, **_: Any) -> None:
    # Sent once, in the main worker process, when it is ready to consume.
    sweeper(sender.app).start()
    files = files_sweeper(sender.app)
    if files is not None:
        files.start()


@worker_shutdown.connect
def _stop_sweeper(sender: Any, **_: Any) -> None:
    sweeper(sender.app).stop()
    files = files_sweeper(sender.app)
    if files is not None:
        files.stop()


@shared_task(bind=True, name=JOB_TASK, max_retries=DB_RETRIES)
def run_job(self: Task, job_id: str) -> str:
    """Runs (or resumes) the job ``job_id``; returns its final status (see ``jobs.run_job``)."""
    context = job_context(self.app)
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


@shared_task(bind=True, name=fanout.VOTE_SHARD_TASK, max_retries=DB_RETRIES)
def vote_shard(self: Task, job_id: str, iteration: int, shard: int) -> str:
    """Counts one shard of a fanned-out vote (see ``workers.fanout``); returns a status word."""
    context = job_context(self.app)
    assert context.fanout is not None
    plan = context.fanout
    return _shard(self, job_id, lambda: fanout.count_shard(context, plan, job_id, iteration, shard))


@shared_task(bind=True, name=chunks.GENERATE_CHUNK_TASK, max_retries=DB_RETRIES)
def generate_chunk(self: Task, job_id: str, iteration: int, step: int, shard: int) -> str:
    """Makes one chunk of a fanned-out generation call (see ``workers.chunks``); returns a
    status word."""
    context = job_context(self.app)
    assert context.fanout is not None
    plan = context.fanout
    return _shard(
        self, job_id, lambda: chunks.make_chunk(context, plan, job_id, iteration, step, shard)
    )


def _shard(task: Task, job_id: str, work: Callable[[], str]) -> str:
    """Runs a shard's ``work``. A database outage is retried like a job's; anything else is
    left to the job's coordinator, which takes a shard over once its claim goes stale."""
    try:
        return work()
    except OperationalError:
        retries = task.request.retries
        if retries < DB_RETRIES:
            logger.warning("shard task of job %s: database unavailable; retry", job_id)
            raise task.retry(countdown=DB_RETRY_FIRST_S * 2**retries) from None
        raise
