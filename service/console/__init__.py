"""The gateway's web pages: the console (``/console``) and the API docs (``/docs``, ``/redoc``),
served from this package's templates and static files, nothing from elsewhere."""

from __future__ import annotations

from fastapi import FastAPI

from service.console.docs import mount_docs
from service.console.routes import mount, templates
from service.storage import Storage


def mount_console(app: FastAPI, storage: Storage, *, upload_limit: int | None = None) -> None:
    """Adds the console and the API docs to the gateway; none of it is in the OpenAPI schema.

    Build ``app`` with ``docs_url=None, redoc_url=None``: these docs pages replace FastAPI's.
    ``upload_limit`` is the largest body the upload form reads (default: the app's limit).
    """
    mount(app, storage, upload_limit=upload_limit)
    mount_docs(app, templates())


__all__ = ["mount_console"]
