"""Calls the gateway's own /v1 routes in process, as the signed-in tenant.

The console has no access of its own: every read and write it makes is a request to the
public API with the session's key, so it shows and does exactly what that key may through the
API (tenant scoping, budgets, policy, upload checks, error messages), and nothing else. The
call goes straight into the ASGI app, without a socket, and streams both ways: an upload is
passed on as it arrives, server-sent events as they are made.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.types import ASGIApp, Message

_STOP_S = 5.0
"""How long a call left early waits for its route to end (a stream notices within a poll)."""


@dataclass(frozen=True)
class ApiResponse:
    """The start of an API response; ``body`` yields its bytes as the route sends them."""

    status: int
    headers: Mapping[str, str]
    body: AsyncIterator[bytes]

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.body])

    async def json(self) -> Any:
        return json.loads(await self.read())


class ApiBridge:
    """Makes requests to an ASGI app in the same process and event loop.

    Args:
        app: the gateway (its routes, middleware and error handlers all apply).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str,
        query: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        body: AsyncIterator[bytes] | bytes = b"",
    ) -> AsyncIterator[ApiResponse]:
        """Sends one request with ``Authorization: Bearer <key>``; the response is open in the
        ``with`` block. Leaving the block early tells the route that its client disconnected
        (a server-sent event stream then stops) and waits for it to stop."""
        sent: asyncio.Queue[Message] = asyncio.Queue()
        gone = asyncio.Event()
        chunks: AsyncIterator[bytes] = _once(body) if isinstance(body, bytes) else body.__aiter__()
        body_done = False

        async def receive() -> Message:
            nonlocal body_done
            if not body_done:
                try:
                    return {"type": "http.request", "body": await anext(chunks), "more_body": True}
                except StopAsyncIteration:
                    body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await sent.put(message)

        raw_headers = [(b"authorization", f"Bearer {key}".encode())]
        raw_headers += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        scope = {
            "type": "http",
            # 2.3: Starlette's streaming responses then watch receive() for the disconnect.
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": urlencode(query or {}).encode(),
            "headers": raw_headers,
            "client": ("127.0.0.1", 0),
            "server": ("console", 80),
            "state": {},
        }

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                await sent.put({"type": "bridge.done"})

        task = asyncio.create_task(run())
        try:
            start = await sent.get()
            if start["type"] != "http.response.start":
                await task  # the app raised before answering: let its error surface
                raise RuntimeError(f"the API sent {start['type']!r} before a response")
            headers_out = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]
            }

            async def stream() -> AsyncIterator[bytes]:
                while True:
                    message = await sent.get()
                    if message["type"] == "bridge.done":
                        return
                    if message["type"] == "http.response.body":
                        if message.get("body"):
                            yield message["body"]
                        if not message.get("more_body", False):
                            return

            yield ApiResponse(start["status"], headers_out, stream())
        finally:
            # The route sees its client leave and ends; if this caller is itself cancelled
            # meanwhile, the route still ends on its own and its outcome is collected below.
            gone.set()
            task.add_done_callback(_collect)
            if not task.done():
                await asyncio.wait({task}, timeout=_STOP_S)
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def json(
        self,
        method: str,
        path: str,
        *,
        key: str,
        query: Mapping[str, str | int] | None = None,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One JSON request and its decoded answer: ``(status, body)``."""
        all_headers = dict(headers or {})
        body = b""
        if payload is not None:
            body = json.dumps(payload).encode()
            all_headers["content-type"] = "application/json"
        all_headers["content-length"] = str(len(body))
        async with self.request(
            method, path, key=key, query=query, headers=all_headers, body=body
        ) as response:
            raw = await response.read()
        return response.status, (json.loads(raw) if raw else None)


def _collect(task: asyncio.Task[None]) -> None:
    """Retrieves a finished route's outcome, so that no error goes unreported as 'never
    retrieved'; errors that matter were raised to the caller already."""
    if not task.cancelled():
        task.exception()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body
