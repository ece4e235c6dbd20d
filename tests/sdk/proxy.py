"""A loopback HTTP proxy to a real server that can fail on purpose (503, dropped connection).

Each request is forwarded to the upstream server first, so a scripted failure stands for a lost
response: the server acted, the client did not hear. That is the case retries must survive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

DROP = "drop"
"""A fault that closes the connection without an answer."""

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Seen:
    method: str
    path: str
    idempotency_key: str | None
    at: float


@dataclass
class Proxy:
    """What the proxy saw, and the faults it still has to serve, first to last.

    A fault is an HTTP status (answered with a JSON error body) or ``DROP``; ``retry_after``
    maps a fault's position to the Retry-After header sent with it.
    """

    url: str = ""
    faults: list[int | str] = field(default_factory=list)
    retry_after: dict[int, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, method: str, path: str, key: str | None) -> tuple[int | str | None, str]:
        with self.lock:
            index = len(self.seen)
            self.seen.append(Seen(method, path, key, time.monotonic()))
            fault = self.faults.pop(0) if self.faults else None
            return fault, self.retry_after.get(index, "")


@contextmanager
def flaky_proxy(upstream: str) -> Iterator[Proxy]:
    """Runs a proxy to ``upstream`` on a free loopback port for the ``with`` block."""
    state = Proxy()
    forward = httpx.Client(base_url=upstream, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            answer = forward.request(self.command, self.path, content=body, headers=headers)
            fault, retry_after = state.next_fault(
                self.command, self.path, self.headers.get("Idempotency-Key")
            )
            if fault == DROP:
                self.close_connection = True
                return
            status = answer.status_code if fault is None else int(fault)
            content = answer.content if fault is None else b'{"detail": "proxy fault"}'
            self.send_response(status)
            if fault is None:
                for name, value in answer.headers.items():
                    if name.lower() not in _HOP_BY_HOP | {"content-encoding", "date", "server"}:
                        self.send_header(name, value)
            else:
                self.send_header("Content-Type", "application/json")
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        forward.close()
