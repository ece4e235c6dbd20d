"""Receiving and checking a tenant's dataset upload, with no partial data left on any error.

Two steps, both safe on hostile input:

1. ``receive_upload`` streams the bytes into storage under a hard size limit, hashing them on
   the way; memory stays at one chunk whatever the size, and any error (limit, client gone,
   disk full) leaves no object behind.
2. ``validate_dataset`` loads the stored file with ``pe_core.datasets.load_dataset`` and turns
   every failure into an ``UploadRejected`` with a 4xx status and a message saying how to fix
   the file; user data never causes a 500.

Neither step returns or logs record contents. The summary holds the record count and the label
names, which the service shows only to the tenant who owns the data (they are not DP outputs
and must never appear in anything released or shown to anyone else).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import traceback
import zipfile
from collections.abc import AsyncIterable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import anyio.to_thread

from pe_core.datasets import DEFAULT_ZIP_LIMITS, TABLE_SUFFIXES, ZipLimits, load_dataset
from pe_core.errors import DataError, PrivevoError
from pe_core.samples import Modality
from service.storage import Storage

logger = logging.getLogger(__name__)

UPLOAD_SUFFIXES = frozenset(TABLE_SUFFIXES | {".npz", ".zip"})
"""File types an upload may have: ``load_dataset``'s single-file formats (an image folder
arrives zipped)."""

_ARCHIVE_SUFFIXES = frozenset({".npz", ".zip"})
_UNITS = ("KiB", "MiB", "GiB", "TiB")


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
class DatasetSummary:
    """What validation reports about a dataset; for its owner's eyes only.

    Attributes:
        record_count: number of records the dataset holds.
        labels: the label names found, sorted (or as stored in an npz/parquet file).
        modality: "image" or "text".
    """

    record_count: int
    labels: tuple[str, ...]
    modality: Modality


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


def validate_dataset(
    path: str | os.PathLike[str],
    *,
    modality: Modality | None,
    text_column: str = "text",
    label_column: str = "label",
    zip_limits: ZipLimits = DEFAULT_ZIP_LIMITS,
    display_name: str | None = None,
) -> DatasetSummary:
    """Loads a stored upload to check it, and summarises it for its owner.

    The whole dataset is decoded into memory once (the loader's design); run this in a worker,
    not in the gateway. Archives (zip, npz) are refused before any decompression when their
    members declare more than ``zip_limits`` allows.

    Args:
        path: the stored file (``Storage.path``), whose suffix selects the format.
        modality: "image" or "text", or None to infer it from the format.
        text_column: the text field of csv, jsonl and parquet files.
        label_column: the label field of csv, jsonl and parquet files.
        zip_limits: caps on an archive's member count and total declared uncompressed size.
        display_name: how messages name the file (default: its base name), so that the
            server's storage paths never reach the client.

    Returns:
        The record count, label names and modality.

    Raises:
        UploadRejected: 415 for an unsupported suffix, 413 for an archive over ``zip_limits``,
            422 for a corrupt, empty or wrongly shaped file (the loader's message, which says
            how to fix it), 400 for any other failure to read it.
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
    return DatasetSummary(
        record_count=len(samples),
        labels=samples.label_names,
        modality="image" if samples.images is not None else "text",
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
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(validate_dataset, path, **options).result()
        except BrokenProcessPool:
            # The validator died, most likely killed for memory: too large for this server.
            raise UploadTooLarge(
                "the dataset is too large to validate on this server; split it or ask the "
                "operator for more memory",
                limit_bytes=0,
            ) from None
