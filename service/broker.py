"""The Celery broker both sides share: the gateway sends job tasks by name, workers take them.

A PE job runs for minutes to hours, so a message is acknowledged only when its task has ended
(``task_acks_late``), a worker takes one message at a time (``worker_prefetch_multiplier=1``),
and a message whose worker died is handed out again: by Redis once its visibility timeout has
passed, by the worker itself when one of its pool processes is killed
(``task_reject_on_worker_lost``). Redelivery is safe because a job resumes from its checkpoint
and every noisy release is recorded exactly once (see :mod:`workers.ledger`).

The visibility timeout must outlast the longest task: Redis redelivers any message still
unacknowledged after it, even one whose worker is alive and busy, and two workers would then run
one job (the job lock in :mod:`workers.jobs` makes the second stop at once, but its message is
then acknowledged). It is therefore derived from the hard time limit, which is the longest a task
can run.

The gateway imports no worker code: it sends ``JOB_TASK`` by name to the queue stored on the job
row at reservation (:func:`queue_for`). Job state lives in the database, so there is no result
backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from celery import Celery
from kombu import Queue

from pe_core.apis import API_REGISTRY
from pe_core.config import PeJob
from service.settings import Settings

QueueName = Literal["cpu", "gpu"]
AppT = TypeVar("AppT", bound=Celery)

CPU_QUEUE: Final = "cpu"
GPU_QUEUE: Final = "gpu"
JOB_TASK: Final = "workers.tasks.run_job"
_BROKER_FOLDERS: Final = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")


def time_limits(hard_s: int) -> tuple[int, int, int]:
    """(soft limit, hard limit, Redis visibility timeout) in seconds for a hard limit.

    The soft limit leaves the task 5% of the hard limit (at least 1 s, at most 5 min) to record
    the failure. The visibility timeout outlasts the hard limit by 10% (at least 1 s, at most
    1 h), so Redis never hands out the message of a task that may still be running.
    """
    if hard_s < 2:
        raise ValueError(f"the task time limit must be at least 2 s, got {hard_s}")
    soft = hard_s - min(300, max(1, hard_s // 20))
    visibility = hard_s + min(3600, max(1, math.ceil(hard_s / 10)))
    return soft, hard_s, visibility


def queue_for(job: PeJob) -> QueueName:
    """The queue a job's task goes to: "gpu" for APIs whose generator uses an accelerator
    (diffusion models, language models), "cpu" for simulators. Stored on the job row."""
    uses_accelerator = getattr(API_REGISTRY.factory(job.api), "uses_accelerator", True)
    return GPU_QUEUE if uses_accelerator else CPU_QUEUE


def send_job(app: Celery, job_id: str, queue: str) -> None:
    """Queues the job task of ``job_id`` on ``queue`` (the job row's)."""
    app.send_task(JOB_TASK, args=[job_id], queue=queue)


def make_celery(settings: Settings) -> Celery:
    """The gateway's producer app for ``settings`` (see :func:`configure`)."""
    return configure(Celery("privevo"), settings)


def configure(app: AppT, settings: Settings) -> AppT:
    """Sets an app's broker, long-job options and queues from ``settings``; returns the app.

    With the embedded ``filesystem://`` broker, its message folders are under
    ``settings.broker_folder``; they are created by :func:`prepare_broker`, not here. That
    broker has no visibility timeout: a message taken by a worker that dies is not handed out
    again, and the job comes back only through the stale-job sweeper.
    """
    soft, hard, visibility = time_limits(settings.task_time_limit_s)
    visibility = settings.visibility_timeout_s or visibility
    transport: dict[str, Any]
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        transport = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
        }
    else:
        transport = {
            "visibility_timeout": visibility,
            # Sweep for messages of dead workers a few times per timeout (default: every
            # 100 s), so short test timeouts and long production ones both recover promptly.
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
        }
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=hard,
        task_soft_time_limit=soft,
        task_queues=(Queue(CPU_QUEUE), Queue(GPU_QUEUE)),
        task_default_queue=CPU_QUEUE,
        task_create_missing_queues=False,
    )
    return app


def prepare_broker(app: Celery) -> None:
    """Creates the message folders of an app on the embedded ``filesystem://`` broker.

    Called when a worker starts and when the gateway builds its producer; kombu does not create
    them and fails without them. A no-op for other brokers.
    """
    if not str(app.conf.broker_url).startswith("filesystem://"):
        return
    options = app.conf.broker_transport_options
    for name in _BROKER_FOLDERS:
        Path(options[name]).mkdir(parents=True, exist_ok=True)
