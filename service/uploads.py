"""Receiving and checking a tenant's dataset upload, with no partial data left on any error.

Two steps, both safe on hostile input:

1. ``receive_form`` parses the request's multipart/form-data body as it streams in: the file
   part's bytes go through ``receive_upload`` straight into storage under a hard size limit,
   hashed on the way, and the other parts become small, capped text fields. Nothing is spooled
   to a temporary file first, memory stays at one chunk whatever the size, and any error
   (limit, malformed body, client gone, disk full) leaves no object behind.
2. ``validate_dataset`` loads the stored file with ``pe_core.datasets.load_dataset`` and turns
   every failure into an ``UploadRejected`` with a 4xx status and a message saying how to fix
   the file; user data never causes a 500. With the tenant's digest key it also makes the
   records' keyed digests (:mod:`service.digests`) from the records as decoded, which decide
   the budget the dataset joins.

Crashes leave nothing behind for long: each upload's folder (``uploads/<random>/``) carries a
lock its request holds until the dataset is committed or the folder deleted (:func:`receiving`);
the kernel drops the lock when the gateway dies however it dies, and the gateway sweeps folders
whose lock is free and which no dataset keeps (:func:`sweep_orphan_uploads`) when it starts and
periodically. The validator process dies with the gateway (:func:`validate_in_child_process`).

Neither step returns or logs record contents. The summary holds the record count, the label
names and the number of repeated records, which the service shows only to the tenant who owns
the data (they are not DP outputs and must never appear in anything released or shown to
anyone else); its record digests are shown to no one. With a user column the records are loaded
with their users, so a missing or malformed column is refused here; the summary then says the
unit is one user, and holds no count of users (a count of private users has no place beside
DP outputs, so none is made).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
)
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from pe_core.datasets import DEFAULT_ZIP_LIMITS, TABLE_SUFFIXES, ZipLimits, load_dataset
from pe_core.errors import DataError, PrivevoError
from pe_core.samples import DataShape, Modality
from service.digests import RecordDigests, digest_records, new_digest_key
from service.storage import InvalidKeyError, LocalStorage, Storage, check_key

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

UPLOAD_SUFFIXES = frozenset(TABLE_SUFFIXES | {".npz", ".zip"})
"""File types an upload may have: ``load_dataset``'s single-file formats (an image folder
arrives zipped)."""

MAX_FORM_FIELD_BYTES: Final = 4096
"""The longest value a form field other than the file may have, in bytes."""

MAX_FORM_PARTS: Final = 16
"""The most parts (the file and the fields) a form may have."""

PrivacyUnit = Literal["record", "user"]
"""What a dataset's budget protects: one record, or all records of one user."""

UPLOADS: Final = "uploads"
"""The storage prefix under which each upload gets a folder of its own."""

RECEIVING: Final = ".receiving"
"""The lock file of an upload's folder while its request runs (storage keys never start with a
dot, so no object can take its name)."""

ORPHAN_GRACE_S: Final = 600.0
"""An upload folder without a lock file (one made before locks, or whose request died before
locking it) is swept once it has not changed for this long, in seconds."""

_ARCHIVE_SUFFIXES = frozenset({".npz", ".zip"})
_UNITS = ("KiB", "MiB", "GiB", "TiB")
_WRITE_BYTES = 1024 * 1024
_FORM_HINT = "let the HTTP client build the form (e.g. curl -F file=@data.npz -F name=...)"


class UploadRejected(PrivevoError):
    """The upload cannot be used; ``status_code`` is the 4xx HTTP status to answer with.

    Attributes:
        status_code: 400, 413, 415 or 422.
        message: what is wrong and how to fix it, fit to show the uploading tenant.
    """

    def __init__(self, status_code: int, message: str) -> None:
        if not 400 <= status_code < 500:
            raise ValueError(f"an upload rejection needs a 4xx status, got {status_code}")
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses the process boundary of validate_in_child_process intact.
        return (type(self), (self.status_code, self.message))


class UploadTooLarge(UploadRejected):
    """The upload, or what an archive would expand to, exceeds a byte limit (HTTP 413).

    Attributes:
        limit_bytes: the limit that was exceeded, in bytes.
    """

    def __init__(self, message: str, limit_bytes: int) -> None:
        super().__init__(413, message)
        self.limit_bytes = limit_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.limit_bytes))


@dataclass(frozen=True)
class UploadedFile:
    """A stored upload.

    Attributes:
        key: its storage key.
        size: its length in bytes.
        sha256: hex SHA-256 digest of its bytes (equals ``sha256sum`` of the client's file).
    """

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ReceivedForm:
    """A multipart form as received by :func:`receive_form`.

    Attributes:
        file: the stored file part, or None when the form had none.
        filename: the client's name of the file (for messages only), or None.
        fields: the other parts as UTF-8 text, by name; a repeated name keeps its last value.
    """

    file: UploadedFile | None
    filename: str | None
    fields: dict[str, str]


@dataclass(frozen=True)
class DatasetSummary:
    """What validation reports about a dataset; for its owner's eyes only.

    Attributes:
        record_count: number of records the dataset holds.
        labels: the label names found, sorted (or as stored in an npz/parquet file).
        modality: "image" or "text".
        image_shape: (height, width, channels) of every image; None for texts.
        duplicate_records: records that repeat an earlier record of the upload (content only,
            not the label); each copy votes, so the tenant should know.
        privacy_unit: "user" when the records were loaded with a user column, else "record".
        record_digests: the records' keyed digests, for the budget; None without a key. Never
            shown, the owner included, and left out of ``repr`` and comparisons.
    """

    record_count: int
    labels: tuple[str, ...]
    modality: Modality
    image_shape: tuple[int, int, int] | None = None
    duplicate_records: int = 0
    privacy_unit: PrivacyUnit = "record"
    record_digests: RecordDigests | None = field(default=None, repr=False, compare=False)


def format_bytes(size: int) -> str:
    """Formats a byte count in binary units for messages: 512 bytes, 8 MiB, 1.5 GiB."""
    exponent = min((size.bit_length() - 1) // 10, len(_UNITS)) if size > 0 else 0
    if exponent == 0:
        return f"{size} bytes"
    value = f"{size / 1024**exponent:.1f}".removesuffix(".0")
    return f"{value} {_UNITS[exponent - 1]}"


def upload_suffix(filename: str) -> str:
    """Returns the lower-case suffix of a client's file name if uploads of that type are taken.

    The service stores the upload under a key of its own choosing that keeps this suffix, since
    the loader picks the format by suffix; the client's name goes no further.

    Raises:
        UploadRejected: 415 for any other suffix.
    """
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadRejected(
            415,
            f"unsupported file type {suffix or '(none)'!r}; upload a file ending in one of "
            f"{', '.join(sorted(UPLOAD_SUFFIXES))} (zip an image folder with one subfolder "
            f"per class)",
        )
    return suffix


class _Sink:
    """Counts, hashes and writes chunks, refusing the first one that passes the limit."""

    def __init__(self, writer: BinaryIO, max_bytes: int) -> None:
        self.writer = writer
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.max_bytes:
            raise UploadTooLarge(
                f"the upload is larger than the limit of {format_bytes(self.max_bytes)}; "
                f"send a smaller dataset (fewer records or smaller images)",
                self.max_bytes,
            )
        self.size += len(chunk)
        self.digest.update(chunk)
        self.writer.write(chunk)

    def pull(self, chunks: Iterator[bytes]) -> bool:
        """Adds the next chunk of a blocking source; False once it is exhausted."""
        chunk = next(chunks, None)
        if chunk is None:
            return False
        self.add(chunk)
        return True


async def receive_upload(
    chunks: Iterable[bytes] | AsyncIterable[bytes],
    storage: Storage,
    key: str,
    *,
    max_bytes: int,
) -> UploadedFile:
    """Streams an upload into ``storage`` under ``key``, with a hard size limit.

    The object appears only once every byte is written and synced; on any error (the limit, the
    source raising because the client went away, a storage failure, cancellation) nothing is
    left under ``key`` (an object already there stays). Memory use is one chunk at a time.

    Writes and the final fsync run in worker threads so that the event loop is never blocked by
    disk I/O; a plain (blocking) iterable is also read in a worker thread. A cancellation that
    arrives during the final commit takes effect after it, so the object may then exist.

    Args:
        chunks: the body, e.g. Starlette's ``request.stream()``, or any iterable of bytes.
        storage: where to write.
        key: the storage key; give it the upload's suffix (``upload_suffix``).
        max_bytes: the most bytes accepted; the first byte beyond aborts the upload.

    Returns:
        The key, the size in bytes and the hex SHA-256 of the bytes.

    Raises:
        UploadTooLarge: more than ``max_bytes`` arrived (413, the message gives the limit).
        UploadRejected: nothing arrived (422).
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    target = storage.open_write(key)
    # Entered here, not in a thread: a cancellation arriving while a thread opened the
    # temporary file would lose the handle, and with it the cleanup.
    sink = _Sink(target.__enter__(), max_bytes)
    try:
        if isinstance(chunks, AsyncIterable):
            async for chunk in chunks:
                await anyio.to_thread.run_sync(sink.add, chunk)
        else:
            iterator = iter(chunks)
            while await anyio.to_thread.run_sync(sink.pull, iterator):
                pass
        if sink.size == 0:
            raise UploadRejected(422, "the upload is empty; send the dataset file's bytes")
    except BaseException as exc:
        # Run here, not in a thread: the cleanup (close and unlink) is quick and must not be
        # skipped by a second cancellation.
        target.__exit__(type(exc), exc, exc.__traceback__)
        raise
    await anyio.to_thread.run_sync(target.__exit__, None, None, None)
    return UploadedFile(key=key, size=sink.size, sha256=sink.digest.hexdigest())


async def receive_form(
    body: AsyncIterable[bytes],
    content_type: str | None,
    storage: Storage,
    prefix: str,
    *,
    max_bytes: int,
    file_field: str = "file",
) -> ReceivedForm:
    """Parses a multipart/form-data body as it streams in, storing its file part on the way.

    The file part (the one named ``file_field``) is streamed by :func:`receive_upload` into
    storage under ``<prefix>/data<suffix>``, the suffix taken from the client's file name
    (:func:`upload_suffix`), and refused the moment it passes ``max_bytes``. The other parts
    are form fields of at most :data:`MAX_FORM_FIELD_BYTES` each, :data:`MAX_FORM_PARTS` parts
    in all. On any error nothing is left under ``prefix``, which must be this upload's own.

    Args:
        body: the request body, e.g. Starlette's ``request.stream()``.
        content_type: the request's Content-Type header (it holds the boundary).
        storage: where to write the file.
        prefix: the storage prefix of this upload.
        max_bytes: the most bytes the file may have.
        file_field: the name of the file part.

    Returns:
        The stored file (None if the form had no file part), its client-side name and the
        fields. Checking that the fields are the ones expected is the caller's job.

    Raises:
        UploadRejected: 415 for a body that is not multipart/form-data or a file type not
            taken; 400 for a malformed body (no boundary, a broken part, a second file part, a
            field that is not UTF-8, a body ending before its closing boundary); 413 for a file
            over ``max_bytes`` (:class:`UploadTooLarge`), a field over its cap or too many
            parts; 422 for an empty file.
    """
    form = _FormParser(_boundary(content_type, file_field), file_field)
    chunks = aiter(body)
    stored = None
    try:
        while form.filename is None and await form.feed_next(chunks):
            pass
        if form.filename is not None:
            key = f"{prefix}/data{upload_suffix(form.filename)}"
            async with aclosing(form.file_chunks(chunks)) as data:
                stored = await receive_upload(data, storage, key, max_bytes=max_bytes)
        while await form.feed_next(chunks):
            pass
        if not form.ended:
            raise UploadRejected(
                400, f"the multipart body ended before its closing boundary; {_FORM_HINT}"
            )
    except BaseException:
        storage.delete_prefix(prefix)
        raise
    return ReceivedForm(file=stored, filename=form.filename, fields=form.fields)


@contextmanager
def receiving(storage: LocalStorage, prefix: str) -> Iterator[None]:
    """Holds the lock of an upload's own folder ``prefix`` while the block runs.

    The lock is an ``flock`` on :data:`RECEIVING` in the folder, made under a temporary name
    and renamed into place once locked, so the sweep never finds it unlocked while its request
    lives; the kernel releases it when the process ends, however it ends. The request must
    commit its dataset, or delete the folder, before the block ends.
    """
    folder = storage.make_folder(prefix)
    temporary = folder / f"{RECEIVING}.{secrets.token_hex(8)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: always free
        os.rename(temporary, folder / RECEIVING)
        yield
    finally:
        for path in (temporary, folder / RECEIVING):
            path.unlink(missing_ok=True)  # renamed already, or deleted with the folder
        os.close(descriptor)  # releases the lock


def sweep_orphan_uploads(
    storage: LocalStorage,
    in_use: Callable[[Collection[str]], Collection[str]],
    *,
    store: Storage | None = None,
    forget: Callable[[str], object] | None = None,
    grace_s: float = ORPHAN_GRACE_S,
) -> list[str]:
    """Deletes the upload folders that no request holds and no dataset keeps.

    A gateway killed while receiving (a half-written ``.tmp``) or validating (a whole upload)
    leaves its folder behind, unlocked. Each folder's lock is taken (without waiting) before
    its keys are looked up, so a request that still runs keeps its folder, and one that has
    committed its dataset is found keeping it.

    With a separate ``store`` the folders are only staging copies: a folder whose dataset was
    committed (the gateway died before deleting its copy) loses the copy, and one whose
    dataset was not loses the copy and whatever of it reached the store.

    Args:
        storage: where uploads are received (the gateway's local folder).
        in_use: the keys among those given that a dataset (not deleted) keeps
            (:func:`service.db.uploads_in_use` on a session).
        store: where committed uploads are copied when that is not ``storage`` (a remote
            backend); None when they stay in ``storage``.
        forget: called with the prefix of each upload no dataset keeps, before its copy in
            ``store`` is deleted: deletes the data key made for it (encryption at rest) if
            its dataset was never committed.
        grace_s: how long a folder without a lock file is left alone since it last changed.

    Returns:
        The prefixes deleted.
    """
    base = storage.root / UPLOADS
    removed: list[str] = []
    try:
        folders = sorted(entry for entry in base.iterdir() if entry.is_dir())
    except FileNotFoundError:
        return removed
    for folder in folders:
        try:
            prefix = check_key(f"{UPLOADS}/{folder.name}")
        except InvalidKeyError:
            continue  # not a folder the gateway makes
        with _unless_held(folder, grace_s) as free:
            if not free:
                continue
            keys = storage.list(prefix)
            kept = bool(keys) and bool(in_use(keys))
            if kept and store is None:
                continue
            if store is not None and not kept:
                if forget is not None:
                    forget(prefix)
                store.delete_prefix(prefix)
            storage.delete_prefix(prefix)
            if not kept:
                removed.append(prefix)
    if removed:
        logger.warning("deleted %d orphan upload folders (their request died)", len(removed))
    return removed


@contextmanager
def _unless_held(folder: Path, grace_s: float) -> Iterator[bool]:
    """Yields whether no live request holds ``folder`` (holding its lock while it is checked)."""
    try:
        descriptor = os.open(folder / RECEIVING, os.O_RDONLY)
    except FileNotFoundError:
        try:
            age = time.time() - folder.stat().st_mtime
        except FileNotFoundError:
            age = 0.0  # deleted meanwhile
        yield age > grace_s
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


def _boundary(content_type: str | None, file_field: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        sent = kind.decode("latin-1") or "no Content-Type"
        raise UploadRejected(
            415,
            f"send the dataset as multipart/form-data (a {file_field!r} part and the form "
            f"fields), not {sent}; {_FORM_HINT}",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadRejected(
            400, f"the multipart/form-data Content-Type names no boundary; {_FORM_HINT}"
        )
    return boundary


class _FormParser:
    """python-multipart's streaming parser, turning parts into a file stream and fields.

    Bytes of the file part collect in ``file_data`` as chunks are fed, until
    :meth:`file_chunks` takes them (at most :data:`_WRITE_BYTES` and one chunk); other parts
    collect in ``fields``. Limits and format errors raise :class:`UploadRejected` from
    :meth:`feed_next`.
    """

    def __init__(self, boundary: bytes, file_field: str) -> None:
        self.file_field = file_field
        self.filename: str | None = None
        self.file_data = bytearray()
        self.file_done = False
        self.fields: dict[str, str] = {}
        self.ended = False
        self._parts = 0
        self._headers: dict[str, str] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._in_file = False
        self._name = ""
        self._value = bytearray()
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise UploadRejected(400, f"{exc}; {_FORM_HINT}") from None

    async def feed_next(self, chunks: AsyncIterator[bytes]) -> bool:
        """Parses the next chunk of the body; False once the body has ended."""
        chunk = await anext(chunks, None)
        if chunk is None:
            return False
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise UploadRejected(
                400, f"the request body is not valid multipart/form-data ({exc}); {_FORM_HINT}"
            ) from None
        return True

    async def file_chunks(self, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """The file part's bytes, parsing the body until that part ends.

        Yielded in pieces of about :data:`_WRITE_BYTES`: a storage write (a thread hop) per
        network read of 64 KiB took about 1.7 times as long as one per MiB.
        """
        while not self.file_done and await self.feed_next(chunks):
            if len(self.file_data) >= _WRITE_BYTES:
                yield bytes(self.file_data)
                self.file_data.clear()
        if self.file_data:
            yield bytes(self.file_data)
            self.file_data.clear()

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FORM_PARTS:
            raise UploadRejected(
                413,
                f"the form has more than {MAX_FORM_PARTS} parts; send the file and the "
                "documented fields only",
            )
        self._headers.clear()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        name = self._header_field.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise UploadRejected(
                400,
                "a part of the form has no 'Content-Disposition: form-data; name=...' header; "
                + _FORM_HINT,
            )
        name = options[b"name"].decode("utf-8", "replace")
        if name != self.file_field:
            self._name, self._value = name, bytearray()
            return
        if self.filename is not None:
            raise UploadRejected(
                400, f"the form has more than one {name!r} part; send one dataset file per upload"
            )
        self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.file_data += memoryview(data)[start:end]
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FORM_FIELD_BYTES:
            raise UploadRejected(
                413,
                f"form field {self._name!r} is longer than {MAX_FORM_FIELD_BYTES} bytes; send "
                "the dataset itself in the file part",
            )

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file, self.file_done = False, True
            return
        try:
            self.fields[self._name] = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadRejected(
                400, f"form field {self._name!r} is not UTF-8 text; send it as UTF-8"
            ) from None

    def _end(self) -> None:
        self.ended = True


def validate_dataset(
    path: str | os.PathLike[str],
    *,
    modality: Modality | None,
    text_column: str = "text",
    label_column: str = "label",
    user_column: str | None = None,
    zip_limits: ZipLimits = DEFAULT_ZIP_LIMITS,
    display_name: str | None = None,
    digest_key: bytes | None = None,
) -> DatasetSummary:
    """Loads a stored upload to check it, summarises it for its owner and digests its records.

    The whole dataset is decoded into memory once (the loader's design); run this in a worker,
    not in the gateway. Archives (zip, npz) are refused before any decompression when their
    members declare more than ``zip_limits`` allows.

    Args:
        path: the stored file (``Storage.path``), whose suffix selects the format.
        modality: "image" or "text", or None to infer it from the format.
        text_column: the text field of csv, jsonl and parquet files.
        label_column: the label field of csv, jsonl and parquet files.
        user_column: the field (tables) or array (npz) naming each record's user, for a
            user-level dataset; every record must name one. None for record-level.
        zip_limits: caps on an archive's member count and total declared uncompressed size.
        display_name: how messages name the file (default: its base name), so that the
            server's storage paths never reach the client.
        digest_key: the tenant's record digest key (``service.db.tenant_digest_key``); None
            counts repeated records but keeps no digests.

    Returns:
        The record count, label names, modality, repeated records, unit and record digests.

    Raises:
        UploadRejected: 415 for an unsupported suffix, 413 for an archive over ``zip_limits``,
            422 for a corrupt, empty or wrongly shaped file or a missing or malformed user
            column (the loader's message, which says how to fix it), 400 for any other failure
            to read it.
    """
    source = Path(path)
    name = display_name if display_name is not None else source.name
    suffix = upload_suffix(source.name)
    if suffix in _ARCHIVE_SUFFIXES:
        _check_archive_limits(source, name, zip_limits)
    try:
        samples = load_dataset(
            source,
            modality=modality,
            text_column=text_column,
            label_column=label_column,
            user_column=user_column,
            zip_limits=zip_limits,
        )
    except DataError as exc:
        raise UploadRejected(422, str(exc).replace(str(source), name)) from None
    except Exception as exc:
        # Not the loader's own checks: a parser failing on hostile input, or a bug. The message
        # may quote record contents, so only the type and the code location are logged.
        logger.warning(
            "dataset validation failed with %s:\n%s",
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        raise UploadRejected(
            400,
            f"{name}: could not be read as a {suffix} dataset ({type(exc).__name__}); check it "
            f"against the documented format",
        ) from None
    shape = DataShape.of(samples)
    # Over every record as decoded and before any label filter: a record is a record whatever
    # its label (no label set is declared at upload, so none is dropped).
    digests = digest_records(samples, digest_key or new_digest_key())
    return DatasetSummary(
        record_count=len(samples),
        labels=shape.labels,
        modality=shape.modality,
        image_shape=shape.image_shape,
        duplicate_records=digests.duplicates,
        privacy_unit="user" if shape.has_users else "record",
        record_digests=None if digest_key is None else digests,
    )


def _check_archive_limits(path: Path, name: str, limits: ZipLimits) -> None:
    """Raises UploadTooLarge when a zip (or npz, which is a zip) declares too much.

    Reads stop at each member's declared size, so the declarations bound what is decompressed.
    The loader applies the same caps to zips but reports them as data errors; npz files it does
    not cap at all.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return  # unreadable: the loader refuses it with a message saying so
    if len(infos) > limits.max_members:
        raise UploadRejected(
            413,
            f"{name}: the archive lists {len(infos)} entries, more than the limit of "
            f"{limits.max_members}; send fewer files",
        )
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise UploadTooLarge(
            f"{name}: the archive would expand to {format_bytes(total)}, more than the limit "
            f"of {format_bytes(limits.max_total_bytes)}; send a smaller dataset",
            limits.max_total_bytes,
        )


def validate_in_child_process(path: str | os.PathLike[str], **options: Any) -> DatasetSummary:
    """Runs :func:`validate_dataset` in a fresh process and returns its summary.

    Validation decodes the whole dataset, which takes memory of the order of its size; in a
    child process that memory goes back to the system when it exits, so the gateway's own
    footprint stays small whatever the uploads (a 1 GB upload: the gateway stays near its idle
    size). Rejections come back as the same :class:`UploadRejected`.

    The child dies with the gateway (:func:`_die_with`): a gateway killed during validation
    once left its validator decoding a 200 MB upload for 25 minutes, for no one.
    """
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=_die_with, initargs=(os.getpid(),)
    )
    with pool:
        try:
            return pool.submit(validate_dataset, path, **options).result()
        except BrokenProcessPool:
            # The validator died, most likely killed for memory: too large for this server.
            raise UploadTooLarge(
                "the dataset is too large to validate on this server; split it or ask the "
                "operator for more memory",
                limit_bytes=0,
            ) from None


PR_SET_PDEATHSIG: Final = 1


def _die_with(parent: int) -> None:
    """Runs first in the validator: ends it as soon as the gateway process ``parent`` ends.

    On Linux the kernel kills it (``PR_SET_PDEATHSIG``). That signal follows the thread that
    started the child, which here waits for the child and shuts its pool down before it
    returns, so it never fires early. A thread polling the parent's pid covers other systems
    (and a parent that died before the signal was set).
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
