"""A real OpenAI-compatible chat-completions server on loopback, scripted by tests.

By default it answers like a tiny, deterministic language model that follows the ``llm`` API's
default prompts: random prompts get ``{words}`` words seeded by the request's ``seed``; fill-in
prompts get every blank replaced by one word; paraphrase prompts get a share of their words
replaced, the request's temperature (all of them at 1 and above), wrapped in a chat preamble
and quotes; anything else gets "an answer to {prompt}".
Tests can queue other replies (status codes, ``Retry-After``, delays, broken bodies) that are
served first, in order.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOCAB = (
    "market", "shares", "growth", "record", "season", "match", "final", "council", "vote",
    "minister", "film", "album", "star", "network", "software", "phone", "chip", "league",
    "coach", "talks", "deal", "profit", "award",
)  # fmt: skip
SEEN_BLANK = "___"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a JSON or raw body, a status, headers and a delay before it."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion(text: str, prompt_tokens: int = 10, completion_tokens: int | None = None) -> dict:
    """A chat-completion body; the completion tokens default to the answer's word count."""
    if completion_tokens is None:
        completion_tokens = len(text.split())
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        },
    }


def model_answer(body: dict[str, Any]) -> str:
    """What the default fake model says to a request (see the module docstring)."""
    rng = random.Random(body["seed"])
    prompt = body["messages"][-1]["content"]
    if "Text:" in prompt:
        source = prompt.split("Text:", 1)[1].split()
        if SEEN_BLANK in source:
            return " ".join(rng.choice(VOCAB) if w == SEEN_BLANK else w for w in source)
        # Like a sampler, the hotter it runs the more words it changes: all at temperature 1.
        changed = rng.sample(
            range(len(source)), max(1, round(min(1, body.get("temperature", 1.0)) * len(source)))
        )
        rewritten = " ".join(rng.choice(VOCAB) if i in changed else w for i, w in enumerate(source))
        return f'Sure! Here is the rewritten text: "{rewritten}"'
    words = re.search(r"about (\d+) words", prompt)
    label = re.search(r'category "([^"]+)"', prompt)
    if words is None or label is None:
        return f"an answer to {prompt}"
    return " ".join([label.group(1), *(rng.choice(VOCAB) for _ in range(int(words.group(1)) - 1))])


class ChatServer:
    """The server, its request log and its script; use :func:`running_chat_server`."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.script: list[Reply] = []
        # Requests still in flight from an earlier test (a timed-out slow reply) are not counted.
        self.epoch = 0
        self.in_flight: dict[int, int] = {}
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                epoch, reply = server._next(dict(self.headers), raw)
                server.stopping.wait(reply.delay_s)
                # Out of flight before the answer leaves: the client may send its next request
                # as soon as it has read this one.
                with server._lock:
                    server.in_flight[epoch] -= 1
                try:
                    payload = (
                        reply.body.encode()
                        if isinstance(reply.body, str)
                        else json.dumps(reply.body).encode()
                    )
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def _next(self, headers: dict[str, str], raw: bytes) -> tuple[int, Reply]:
        with self._lock:
            epoch = self.epoch
            self.in_flight[epoch] = self.in_flight.get(epoch, 0) + 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight[epoch])
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
            self.requests.append(({k.lower(): v for k, v in headers.items()}, body))
            if self.script:
                return epoch, self.script.pop(0)
        return epoch, Reply(body=completion(model_answer(body)))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.script.clear()
            self.epoch += 1
            self.max_in_flight = 0


@contextmanager
def running_chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join()
