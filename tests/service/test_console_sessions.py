"""The console's session store and the reading of an upload form's CSRF field, in process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.console import sessions as store_module
from service.console.forms import MAX_PREFIX_BYTES, FormRefused, first_field
from service.console.sessions import IDLE_S, MAX_AGE_S, SessionStore, tokens_match


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_when_idle_too_long_or_too_old_and_on_sign_out():
    clock = Clock()
    store = SessionStore(clock)
    first = store.create("pev_key", "pev_key")
    assert store.get(first).key == "pev_key"
    clock.now += IDLE_S - 1
    assert store.get(first) is not None  # each request restarts the idle clock
    clock.now += IDLE_S - 1
    assert store.get(first) is not None
    clock.now += IDLE_S + 1
    assert store.get(first) is None
    old = store.create("pev_key", "pev_key")
    for _ in range(MAX_AGE_S // (IDLE_S // 2) + 1):
        clock.now += IDLE_S // 2
        store.get(old)
    assert store.get(old) is None  # however busy, at most MAX_AGE_S
    ended = store.create("pev_key", "pev_key")
    store.drop(ended)
    assert store.get(ended) is None
    assert store.get(None) is None and store.get("") is None and store.get("guess") is None


def test_a_revoked_key_ends_all_its_sessions_and_no_other():
    store = SessionStore(Clock())
    a, b = store.create("pev_a", "pev_a"), store.create("pev_a", "pev_a")
    other = store.create("pev_b", "pev_b")
    store.drop_key("pev_a")
    assert store.get(a) is None and store.get(b) is None
    assert store.get(other) is not None


def test_the_store_is_bounded_dropping_the_oldest(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(store_module, "MAX_SESSIONS", 3)
    store = SessionStore(Clock())
    ids = [store.create(f"pev_{i}", "p") for i in range(5)]
    assert [store.get(i) is not None for i in ids] == [False, False, True, True, True]


def test_sessions_and_tokens_are_distinct_and_compared_exactly():
    store = SessionStore(Clock())
    one, two = store.create("k", "k"), store.create("k", "k")
    assert one != two and store.get(one).csrf_token != store.get(two).csrf_token
    token = store.get(one).csrf_token
    assert tokens_match(token, token)
    assert not tokens_match(token, token[:-1]) and not tokens_match(token, None)
    assert not tokens_match(None, None) and not tokens_match("", "")


BOUNDARY = "----b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(*parts: tuple[str, str, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n".encode()
    return out + f"--{BOUNDARY}--\r\n".encode()


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read(data: bytes, size: int, content_type: str = CONTENT_TYPE) -> tuple[str, bytes]:
    async def go() -> tuple[str, bytes]:
        value, rest = await first_field(chunks(data, size), content_type, "csrf_token")
        return value, b"".join([c async for c in rest])

    return asyncio.run(go())


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_the_first_field_is_read_and_the_whole_body_given_back(size: int):
    data = body(("csrf_token", "tok-123", None), ("name", "x", None), ("file", "B" * 5000, "f"))
    value, again = read(data, size)
    assert value == "tok-123"
    assert again == data  # nothing lost, nothing added: the API parses the same bytes


@pytest.mark.parametrize(
    "data",
    [
        body(("name", "x", None), ("csrf_token", "tok", None)),  # not first
        body(("csrf_token", "tok", "a.txt")),  # a file, not a field
        b"garbage without a boundary",
        b"",
        # a first part that never ends within the limit
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'.encode()
        + b"x" * (MAX_PREFIX_BYTES + 10),
    ],
)
def test_a_form_not_starting_with_its_token_is_refused(data: bytes):
    with pytest.raises(FormRefused):
        read(data, 1000)


def test_a_body_that_is_not_multipart_is_refused():
    with pytest.raises(FormRefused, match="multipart"):
        read(b"csrf_token=x", 100, "application/x-www-form-urlencoded")
