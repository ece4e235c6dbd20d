"""What the gateway refuses, and how it answers, at its edges: before a route runs and when a
dependency fails under it.

* JSON bodies are standard JSON: Python's parser also takes ``NaN``, ``Infinity`` and numbers
  that overflow to infinity (``1e309``), which no field may hold and which a 422 echoing them
  could not even serialise; and no string may hold NUL (``\\u0000``), which PostgreSQL refuses
  in text. Both are refused with a 422 in FastAPI's own shape (:class:`StrictJsonRoute`).
* Every 422 body is serialisable whatever the input was (:func:`validation_failed`).
* A 405 names every method of the path in ``Allow`` (Starlette names those of one route).
* A database that cannot be reached answers 503 with ``Retry-After``, as ``/readyz`` says
  not ready, instead of a 500 (:func:`database_unavailable`).
* Request heads and bodies are capped before anything parses them (:class:`EdgeLimits`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_S: Final = 5
"""What a 503 asks clients to wait before retrying (the SDK honours it)."""


class _RefusedJson(ValueError):
    def __init__(self, message: str, token: str) -> None:
        super().__init__(message)
        self.message = message
        self.token = token


def _constant(name: str) -> float:
    raise _RefusedJson(
        f"{name} is not a JSON number: send a finite number (JSON has no NaN or Infinity)",
        name,
    )


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _RefusedJson(
            f"{text} is too large for a 64-bit float: send a finite number", text.lstrip("-")
        )
    return value


def _strings_without_nul(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise _RefusedJson(
                "strings may not contain NUL (\\u0000): remove it from ids, names and labels",
                "\\u0000",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _strings_without_nul(key)
            _strings_without_nul(item)
    elif isinstance(value, list):
        for item in value:
            _strings_without_nul(item)


def strict_loads(body: bytes) -> Any:
    """Parses a request body as standard JSON without NUL in any string.

    Raises:
        HTTPException: 422, with FastAPI's list of errors (one, located in the body), for
            NaN, +-Infinity, a number that overflows a float, or a string holding NUL.
        json.JSONDecodeError: the body is not JSON (FastAPI answers that itself).
    """
    try:
        value = json.loads(body, parse_constant=_constant, parse_float=_number)
        _strings_without_nul(value)
    except _RefusedJson as exc:
        raise HTTPException(
            status_code=422,
            detail=[
                {"type": "json_invalid", "loc": ["body"], "msg": exc.message, "input": exc.token}
            ],
        ) from None
    return value


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose JSON body is parsed by :func:`strict_loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float written as text (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (``detail``: a list of errors), made serialisable whatever the input."""
    assert isinstance(exc, RequestValidationError)
    errors = _json_safe(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": errors}, status_code=422)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of the app accepts at the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


class EdgeLimits:
    """Refuses a request head over ``max_header_bytes`` (431) and a body over
    ``max_body_bytes`` (413, by its Content-Length or as soon as it passes it), with the
    usual JSON error, before any route parses either.

    Routes that set their own ``max_body_size`` (uploads, which stream their body under
    limits of their own) are left to it. uvicorn's h11 also caps the head
    (``Settings.uvicorn_options``), but only a head it receives in pieces: one that arrives in
    a single read is parsed whole, so the app counts it too.
    """

    def __init__(
        self, app: ASGIApp, *, router: Any, max_header_bytes: int, max_body_bytes: int
    ) -> None:
        self.app = app
        self.router = router
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("raw_path") or scope.get("path", "").encode()
        head = (
            len(path)
            + len(scope.get("query_string", b""))
            + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        )
        if head > self.max_header_bytes:
            detail = (
                f"the request line and headers take {head} bytes, past this server's limit "
                f"of {self.max_header_bytes}"
            )
            await JSONResponse({"detail": detail}, status_code=431)(scope, receive, send)
            return
        if self._own_limit(scope):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        detail = f"the request body exceeds this route's limit of {limit} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status_code=413, detail=detail)
            return message

        await self.app(scope, counted, send)

    def _own_limit(self, scope: Scope) -> bool:
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "max_body_size", None) is not None
        return False


def install(app: FastAPI, *, max_header_bytes: int, max_body_bytes: int) -> None:
    """Adds the handlers and limits above to ``app`` (routes added afterwards use
    StrictJsonRoute)."""
    app.router.route_class = StrictJsonRoute
    app.add_middleware(
        EdgeLimits,
        router=app.router,
        max_header_bytes=max_header_bytes,
        max_body_bytes=max_body_bytes,
    )
    app.add_exception_handler(RequestValidationError, validation_failed)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        detail: Any = exc.detail
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request))
        if exc.status_code in (204, 304):  # no body, as Starlette's own handler
            return Response(status_code=exc.status_code, headers=headers)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    app.add_exception_handler(StarletteHTTPException, http_error)
    for error in (DBAPIError, DisconnectionError, PoolTimeout):
        app.add_exception_handler(error, database_unavailable)


def is_outage(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be reached or used now (retry), as
    opposed to a statement it refused (a bug, which stays a 500)."""
    if isinstance(exc, DisconnectionError | PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    # OperationalError: connection refused or lost, server shutting down, SQLite locked.
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


def database_unavailable(request: Request, exc: Exception) -> Response:
    """503 with Retry-After while the database is out; any other database error is a bug."""
    if not is_outage(exc):
        raise exc
    return JSONResponse(
        {"detail": "the database is unavailable; retry in a few seconds"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
