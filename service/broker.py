"""The Celery broker both sides share: the gateway sends job tasks by name, workers take them.

A PE job runs for minutes to hours, so a message is acknowledged only when its task has ended
(``task_acks_late``), a worker takes one message at a time (``worker_prefetch_multiplier=1``),
and a message whose worker died is handed out again: by Redis once its visibility timeout has
passed, by the worker itself when one of its pool processes is killed
(``task_reject_on_worker_lost``). Redelivery is safe because a job resumes from its checkpoint
and every noisy release is recorded exactly once (see :mod:`workers.ledger`).

The visibility timeout must outlast the longest task: Redis redelivers any message still
unacknowledged after it, even one whose worker is alive and busy, and two workers would then run
one job (the job's lease in :mod:`workers.lease` makes the second stop at once, but its message is
then acknowledged). It is therefore derived from the hard time limit, which is the longest a task
can run.

The gateway imports no worker code: it sends ``JOB_TASK`` by name to the queue stored on the job
row at reservation (:func:`queue_for`). Job state lives in the database, so there is no result
backend.

What a message is sent with, and how it is found again: each job's message goes out through the
database's outbox (:mod:`service.outbox`) with the task id ``<job id>.<generation>``, and the
stale-job sweeper asks where a job's messages are (:class:`MessageFinder`): waiting in the queue,
or taken by a worker and not yet acknowledged, or nowhere. Both brokers can tell:

* Redis (kombu's transport): the queue is a list named after it (``LPUSH`` in, ``BRPOP`` out
  at the other end, so its far end is the oldest), plus one list per priority step;
  unacknowledged messages (late acks) are the ``unacked`` hash (delivery tag to message) and
  the ``unacked_index`` sorted set (delivery tag to when a worker took it).
* The file system: each waiting message is a file ``<time>_<uuid>.<queue>.msg`` in the broker
  folder, removed when a worker takes it; there is no unacknowledged state.

Durability: a Redis without persistence loses every waiting and unacknowledged message when it
restarts. The sweeper sends such jobs again, but production runs Redis with its append-only
file (``docker/compose.yaml``), so a restart loses nothing and nothing waits for a sweep.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from celery import Celery
from kombu import Queue

from pe_core.apis import API_REGISTRY
from pe_core.config import PeJob
from pe_core.registry import Registry
from service.settings import Settings

logger = logging.getLogger(__name__)

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


def send_job(app: Celery, job_id: str, queue: str, task_id: str | None = None) -> None:
    """Queues the job task of ``job_id`` on ``queue`` (the job row's) as task ``task_id``.

    One try: a broker that does not take it raises at once (kombu's
    ``OperationalError``), and the outbox sends again later (:mod:`service.outbox`).
    """
    app.send_task(JOB_TASK, args=[job_id], queue=queue, task_id=task_id, retry=False)


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


@dataclass(frozen=True)
class Whereabouts:
    """Where the messages of some jobs are in the broker, as one look found them.

    Attributes:
        waiting: the jobs with a message in their queue.
        taken: job id to when a worker took its message (epoch seconds; the message's ETA
            instead when that is later: a retry waits for it in the worker's hands), for the
            jobs with a message taken and not yet acknowledged.
        complete: whether the whole queue was looked through: only then is a job in neither
            known to have no message.
    """

    waiting: frozenset[str] = frozenset()
    taken: Mapping[str, float] = field(default_factory=dict)
    complete: bool = True

    def holds(self, job_id: str) -> bool:
        return job_id in self.waiting or job_id in self.taken


class MessageFinder(Protocol):
    """Finds a broker's job messages by the job they run (one implementation per transport)."""

    def locate(self, queue: str, job_ids: Collection[str]) -> Whereabouts:
        """Where the messages of ``job_ids`` on ``queue`` are."""
        ...

    def drop_taken(self, job_ids: Collection[str]) -> int:
        """Drops the unacknowledged messages of jobs whose worker was found dead (their
        replacement is sent instead), so the broker never hands them out again; returns how
        many it dropped."""
        ...

    def claim_sweep(self, every_s: float) -> bool:
        """Whether this caller should look now: True at most once per ``every_s`` seconds
        among all the workers sharing the broker, so the queue is read once per interval."""
        ...


FINDERS: Registry[MessageFinder] = Registry("broker transport")
"""Message finders by the scheme of the broker URL."""

SCAN_CHUNK: Final = 500
"""Messages read per ``LRANGE``."""
SCAN_LIMIT: Final = 100_000
"""The most messages of one queue a look reads; past it, jobs not found are not known lost."""
_REDIS_PRIORITY_SEP: Final = "\x06\x16"
_SWEEP_KEY: Final = "privevo:sweep"


def job_of_message(message: Mapping[str, Any]) -> str | None:
    """The job id a job-task message runs (its only argument), or None for any other message.

    Read from the body kombu stores (JSON ``[args, kwargs, embed]``, base64-encoded).
    """
    try:
        if message["headers"]["task"] != JOB_TASK:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (KeyError, TypeError, IndexError, ValueError, binascii.Error):
        return None
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def _eta(message: Mapping[str, Any]) -> float | None:
    try:
        eta = message["headers"].get("eta")
        return None if eta is None else datetime.fromisoformat(eta).timestamp()
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


class RedisMessages:
    """Job messages in kombu's Redis transport: the queue's lists and the unacked hash.

    Args:
        url: the broker URL.
        options: the broker transport options (the unacked key names, if set).
    """

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self.unacked_key = options.get("unacked_key", "unacked")
        self.index_key = options.get("unacked_index_key", "unacked_index")
        self.priority_steps = tuple(options.get("priority_steps", (0, 3, 6, 9)))

    def locate(self, queue: str, job_ids: Collection[str]) -> Whereabouts:
        # Taken messages are read before and after the queue. A message moves between the two
        # while we look: a worker takes it (queue to unacked) or Redis restores it (unacked to
        # the queue's far end, which the scan reaches last); with both reads, every message
        # that exists throughout the look is seen in one place or the other. The scan reads
        # from the near end by index, and BRPOP takes from the far end, which does not move
        # the indexes of what remains: nothing is skipped (a push may show one twice).
        wanted = frozenset(job_ids)
        taken = self._taken(wanted)
        waiting, complete = self._waiting(queue, wanted)
        for job, since in self._taken(wanted).items():
            taken[job] = max(since, taken.get(job, since))
        return Whereabouts(frozenset(waiting), taken, complete)

    def drop_taken(self, job_ids: Collection[str]) -> int:
        tags = [tag for tag, job, _ in self._unacked() if job in job_ids]
        if not tags:
            return 0
        with self.client.pipeline() as pipe:
            pipe.zrem(self.index_key, *tags)
            pipe.hdel(self.unacked_key, *tags)
            return int(pipe.execute()[1])

    def claim_sweep(self, every_s: float) -> bool:
        milliseconds = max(1, int(every_s * 1000 * 0.9))
        return bool(self.client.set(_SWEEP_KEY, os.getpid(), nx=True, px=milliseconds))

    def _unacked(self) -> Iterator[tuple[bytes | str, str, float | None]]:
        for tag, raw in self.client.hgetall(self.unacked_key).items():
            try:
                message = json.loads(raw)[0]
            except (ValueError, IndexError, TypeError):
                continue
            job = job_of_message(message)
            if job is not None:
                yield tag, job, _eta(message)

    def _taken(self, wanted: frozenset[str]) -> dict[str, float]:
        entries = [(tag, job, eta) for tag, job, eta in self._unacked() if job in wanted]
        if not entries:
            return {}
        with self.client.pipeline(transaction=False) as pipe:
            for tag, _, _ in entries:
                pipe.zscore(self.index_key, tag)
            scores = pipe.execute()
        taken: dict[str, float] = {}
        for (_, job, eta), score in zip(entries, scores, strict=True):
            # No score: the index entry went first (an ack in progress); count it as taken now.
            since = max(time.time() if score is None else float(score), eta or 0.0)
            taken[job] = max(since, taken.get(job, since))
        return taken

    def _waiting(self, queue: str, wanted: frozenset[str]) -> tuple[set[str], bool]:
        found: set[str] = set()
        keys = [queue] + [f"{queue}{_REDIS_PRIORITY_SEP}{p}" for p in self.priority_steps if p]
        read = 0
        for key in keys:
            start = 0
            while found != wanted:
                if read >= SCAN_LIMIT:
                    return found, False
                chunk = self.client.lrange(key, start, start + SCAN_CHUNK - 1)
                for raw in chunk:
                    try:
                        job = job_of_message(json.loads(raw))
                    except ValueError:
                        continue
                    if job in wanted:
                        found.add(job)
                read += len(chunk)
                start += len(chunk)
                if len(chunk) < SCAN_CHUNK:
                    break
        return found, True


class FileMessages:
    """Job messages of kombu's file-system transport: one file per waiting message.

    A message's file is read once (its content never changes) and remembered by name.

    Args:
        folder: the broker folder (``data_folder_in``).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._jobs: dict[str, str | None] = {}

    def locate(self, queue: str, job_ids: Collection[str]) -> Whereabouts:
        wanted = frozenset(job_ids)
        suffix = f".{queue}.msg"
        try:
            names = [name for name in os.listdir(self.folder) if name.endswith(suffix)]
        except FileNotFoundError:
            names = []
        waiting: set[str] = set()
        complete = True
        for name in names:
            if name not in self._jobs:
                try:
                    self._jobs[name] = job_of_message(json.loads((self.folder / name).read_bytes()))
                except FileNotFoundError:
                    # Listed, then taken by a worker before it was read: whose it was is
                    # unknown, so no job is known to have no message.
                    complete = False
                    continue
                except ValueError:
                    self._jobs[name] = None
            job = self._jobs[name]
            if job is not None and job in wanted:
                waiting.add(job)
        present = set(names)
        self._jobs = {name: job for name, job in self._jobs.items() if name in present}
        return Whereabouts(frozenset(waiting), {}, complete)

    def drop_taken(self, job_ids: Collection[str]) -> int:
        return 0  # a taken message is gone from the folder already

    def claim_sweep(self, every_s: float) -> bool:
        return True  # one machine, a folder listing: cheap enough for every sweeper


FINDERS.register(
    "redis",
    lambda app: RedisMessages(str(app.conf.broker_url), app.conf.broker_transport_options or {}),
)
FINDERS.register("rediss", FINDERS.factory("redis"))
FINDERS.register(
    "filesystem", lambda app: FileMessages(app.conf.broker_transport_options["data_folder_in"])
)


def message_finder(app: Celery) -> MessageFinder:
    """The message finder of an app's broker (by its URL's scheme)."""
    return FINDERS.create(str(app.conf.broker_url).split("://", 1)[0], app=app)
