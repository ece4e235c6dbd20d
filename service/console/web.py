"""Response headers shared by the console's pages, the API docs and their static files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles


class NosniffStaticFiles(StaticFiles):
    """Static files with nosniff, so a file is only ever used as the type it is served as."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def secured(response: Response, headers: Mapping[str, str]) -> Response:
    """``response`` with each of ``headers`` it does not set itself."""
    for name, value in headers.items():
        response.headers.setdefault(name, value)
    return response
