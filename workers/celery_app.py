"""The workers' Celery app, built on first use: importing this module reads no settings.

``celery -A workers.celery_app worker -Q cpu`` (or ``-Q gpu``) finds ``app`` here; it is built
from the environment's settings when first asked for (a module ``__getattr__``), and tests build
their own with :func:`create_app`. The broker options (late acks, prefetch 1, time limits, the
visibility timeout) are the gateway's too: :mod:`service.broker`.

A worker whose process dies leaves its job ``running`` with a heartbeat that stops, or ``queued``
with its message in the dead worker's hands; a Redis restarted without persistence loses the
messages it held. Every worker sweeps for jobs whose message is lost and sends it again
(:mod:`workers.sweeper`), so recovery does not wait for the visibility timeout, and works with the
embedded broker too, which has none.

The embedded broker's folders are made when a worker starts (``worker_init``) or a producer is
built (:func:`service.broker.prepare_broker`), never at import.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.signals import worker_init

from service.broker import configure, prepare_broker
from service.settings import Settings


class WorkerApp(Celery):
    """The Celery app of the job workers, with the service settings its tasks run by."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("privevo", include=["workers.tasks"])
        self.settings = settings


def create_app(settings: Settings) -> WorkerApp:
    """The worker app for ``settings``: the shared broker options and the job task."""
    # Connected here, not at import; the uid keeps one receiver however many apps are built.
    worker_init.connect(_prepare_worker_broker, weak=False, dispatch_uid="privevo-broker")
    return configure(WorkerApp(settings), settings)


@functools.cache
def worker_app() -> WorkerApp:
    """The app of this worker process, from the environment's settings (read once)."""
    return create_app(Settings())


def __getattr__(name: str) -> Any:
    # ``celery -A workers.celery_app`` asks for ``app``; building it on that first access keeps
    # imports of this module free of settings reads and side effects.
    if name == "app":
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _prepare_worker_broker(sender: Any, **_: Any) -> None:
    prepare_broker(sender.app)
