"""The Celery application of the job workers, configured for long jobs that must not be lost.

A PE job runs for minutes to hours, so a message is acknowledged only when its task has ended
(``task_acks_late``), a worker takes one message at a time (``worker_prefetch_multiplier=1``),
and a message whose worker died is handed out again: by Redis once its visibility timeout has
passed, by the worker itself when one of its pool processes is killed
(``task_reject_on_worker_lost``). Redelivery is safe because a job resumes from its checkpoint
and every noisy release is recorded exactly once (see :mod:`workers.ledger`).

The visibility timeout must outlast the longest task: Redis redelivers any message still
unacknowledged after it, even one whose worker is alive and busy, and two workers would then run
one job (the job lock in :mod:`workers.tasks` makes the second stop at once, but its message is
then acknowledged). It is therefore derived from the hard time limit, which is the longest a task
can run.

A worker whose process dies leaves its job ``running`` with a heartbeat that stops; every worker
sweeps for such jobs and re-enqueues them (:mod:`workers.sweeper`), so recovery does not wait for
the visibility timeout, and works with the embedded broker too, which has none.

Job state lives in the database, so there is no result backend.

Importing this module creates no folder: the embedded broker's folders are made when a worker
starts or a producer is built (:func:`prepare_broker`).

Start a worker with ``celery -A workers.celery_app worker -Q cpu`` (or ``-Q gpu``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from celery import Celery
from celery.signals import worker_init
from kombu import Queue

from pe_core.config import PeJob
from service.settings import Settings

QueueName = Literal["cpu", "gpu"]

CPU_QUEUE: Final = "cpu"
GPU_QUEUE: Final = "gpu"
JOB_TASK: Final = "workers.tasks.run_job"
_BROKER_FOLDERS: Final = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")

CPU_APIS: Final = frozenset({"drawtext", "grammar"})
"""Variation APIs that are simulators and need no accelerator; every other API (diffusion
models, language models) is a neural generator and runs on the GPU queue."""


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


def queue_for(spec: PeJob | Mapping[str, Any]) -> QueueName:
    """The queue a job's task goes to: "cpu" for simulator APIs, "gpu" for neural generators.

    Args:
        spec: the job, as a :class:`~pe_core.config.PeJob` or its JSON form (``api`` defaults
            to drawtext, as in ``PeJob``).
    """
    default = PeJob.model_fields["api"].default
    api = spec.api if isinstance(spec, PeJob) else spec.get("api", default)
    return CPU_QUEUE if api in CPU_APIS else GPU_QUEUE


def send_job(app: Celery, job_id: str, spec: PeJob | Mapping[str, Any]) -> None:
    """Queues the job task of ``job_id`` on the queue its API needs (see :func:`queue_for`)."""
    app.send_task(JOB_TASK, args=[job_id], queue=queue_for(spec))


def make_celery(settings: Settings) -> Celery:
    """The Celery app for ``settings``: broker, long-job options, queues and the job task.

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
    app = Celery("privevo", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
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

    Called when a worker starts (the ``worker_init`` signal) and when the gateway builds its
    producer; kombu does not create them and fails without them. A no-op for other brokers.
    """
    if not str(app.conf.broker_url).startswith("filesystem://"):
        return
    options = app.conf.broker_transport_options
    for name in _BROKER_FOLDERS:
        Path(options[name]).mkdir(parents=True, exist_ok=True)


@worker_init.connect
def _prepare_worker_broker(sender: Any, **_: Any) -> None:
    prepare_broker(sender.app)


settings = Settings()
app = make_celery(settings)
