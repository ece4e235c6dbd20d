"""Reading the CSRF token of a multipart form before the rest of its body.

The console's upload form is passed on to ``POST /v1/datasets`` as it streams in, so its
CSRF token must be checked before anything reaches the API (which would store the file).
Browsers send a form's fields in document order, and the form puts the token first: this reads
the body up to the end of that first part, and gives back the token and the whole body again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_PREFIX_BYTES = 64 * 1024
"""The most bytes read looking for the first part's end (a token is 43 characters)."""


class FormRefused(Exception):
    """The form's first part is missing, malformed or not the field expected."""


@dataclass
class _FirstPart:
    headers: dict[str, str] = field(default_factory=dict)
    value: bytearray = field(default_factory=bytearray)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    parts: int = 0
    done: bool = False


async def first_field(
    body: AsyncIterator[bytes], content_type: str | None, name: str
) -> tuple[str, AsyncIterator[bytes]]:
    """The value of a multipart body's first part, which must be the field ``name``.

    Args:
        body: the request body as it arrives.
        content_type: the request's Content-Type (with its boundary).
        name: the field expected first.

    Returns:
        The field's value and an iterator over the whole body, the bytes read so far first.

    Raises:
        FormRefused: not multipart/form-data, or its first part is not ``name``.
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise FormRefused("the form was not sent as multipart/form-data")
    part = _FirstPart()

    def begin() -> None:
        part.parts += 1

    def header_field(data: bytes, start: int, end: int) -> None:
        if part.parts == 1:
            part.header_field += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        if part.parts == 1:
            part.header_value += data[start:end]

    def header_end() -> None:
        if part.parts == 1:
            key = part.header_field.decode("latin-1").strip().lower()
            part.headers[key] = part.header_value.decode("latin-1").strip()
            part.header_field.clear()
            part.header_value.clear()

    def data(data: bytes, start: int, end: int) -> None:
        if part.parts == 1 and len(part.value) <= MAX_PREFIX_BYTES:
            part.value += data[start:end]

    def end() -> None:
        if part.parts == 1:
            part.done = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_part_data": data,
            "on_part_end": end,
        },
    )
    read: list[bytes] = []
    size = 0
    async for chunk in body:
        read.append(chunk)
        size += len(chunk)
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise FormRefused(f"the form's body is malformed ({exc})") from None
        if part.done or size > MAX_PREFIX_BYTES:
            break
    if not part.done:
        raise FormRefused(f"the form does not start with its {name!r} field")
    disposition, params = parse_options_header(part.headers.get("content-disposition"))
    if disposition != b"form-data" or params.get(b"name") != name.encode() or b"filename" in params:
        raise FormRefused(f"the form does not start with its {name!r} field")
    return part.value.decode("utf-8", "replace"), _chain(read, body)


async def _chain(read: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in read:
        yield chunk
    async for chunk in rest:
        yield chunk
