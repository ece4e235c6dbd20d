"""Swagger UI (``/docs``) and ReDoc (``/redoc``) from files this server ships.

FastAPI's own docs pages load both from a CDN and start them with an inline script; these load
the vendored copies (``service/static/vendor``, versions and licences in its README) and start
them from static files, under a Content Security Policy that allows no inline script and
nothing from elsewhere. Both UIs set inline styles, so styles may be inline; Redoc's search runs
in a worker it makes from a blob.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from service.console.web import NosniffStaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": DOCS_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def mount_docs(app: FastAPI, templates: jinja2.Environment) -> None:
    """Adds ``/docs``, ``/redoc`` and ``/static`` (build ``app`` with ``docs_url=None,
    redoc_url=None``, so that FastAPI's CDN pages are not there)."""
    openapi_url = app.openapi_url or "/openapi.json"

    def page(name: str) -> HTMLResponse:
        html = templates.get_template(name).render(title=app.title, openapi_url=openapi_url)
        return HTMLResponse(html, headers=_HEADERS)

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return page("docs_swagger.html")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return page("docs_redoc.html")

    app.mount("/static", NosniffStaticFiles(directory=STATIC), name="static")
