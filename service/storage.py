"""Object storage for private uploads, checkpoints and results: one protocol, one registry.

Keys are relative POSIX paths such as ``datasets/7f3a/data.csv``. A prefix names a folder of
keys, matched whole segment by segment: ``datasets/7f3a`` covers ``datasets/7f3a`` and
``datasets/7f3a/...`` but never ``datasets/7f3ab``, so purging one dataset cannot reach another
whose id merely starts the same way. Object stores (S3 and friends) match raw string prefixes;
a backend for them must append the ``/`` itself to keep this meaning.

Two backends: ``local`` (:class:`LocalStorage`, a folder) and ``s3`` (an S3-compatible bucket,
:mod:`service.s3storage`). :func:`service.settings.open_storage` builds the one the settings
choose, for the gateway and the workers alike.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from pe_core.errors import PrivevoError
from pe_core.fileio import fsync_directory
from pe_core.registry import Registry

MAX_KEY_LENGTH = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]*")


class InvalidKeyError(PrivevoError, ValueError):
    """A storage key or prefix is malformed or could escape the storage root."""


class ObjectNotFoundError(PrivevoError, FileNotFoundError):
    """No object is stored under the key."""


class StorageUnavailableError(PrivevoError):
    """The store cannot be used (unreachable, no such bucket, refused): the operator's to fix;
    the message names the setting to look at."""


@runtime_checkable
class Storage(Protocol):
    """Where the service keeps private uploads, checkpoints and results.

    Writers see all of an object or none of it: ``open_write`` publishes the object only when
    its ``with`` block ends without an exception, and an exception leaves no object and no
    partial file (an existing object under the key stays as it was).
    """

    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Yields a binary writer; the object appears under ``key`` when the block succeeds."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """Opens the object for reading; close it (``with``). Raises ObjectNotFoundError."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (a prefix with objects below is not one)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Removes every object under ``prefix`` and returns how many there were.

        Deleting a dataset calls this on the dataset's prefix, which must hold its upload and
        every cache derived from the private data. Writes under the prefix must be stopped
        first (the dataset marked deleted): a write racing with the purge may land after it.
        """
        ...

    def path(self, key: str) -> Path | None:
        """The object's local file, for code that needs a path; None for remote backends
        (:func:`local_copy` gives a path either way).

        Raises ObjectNotFoundError when there is no object under ``key``.
        """
        ...

    def list(self, prefix: str = "") -> Sequence[str]:
        """Sorted keys of the objects under ``prefix`` ("" for all of them)."""
        ...


STORAGE_REGISTRY: Registry[Storage] = Registry("storage backend")


def register_storage(name: str, factory: Callable[..., Storage]) -> None:
    STORAGE_REGISTRY.register(name, factory)


def create_storage(name: str, **config: Any) -> Storage:
    return STORAGE_REGISTRY.create(name, **config)


def check_key(key: str) -> str:
    """Returns ``key`` if it is a safe relative POSIX key, else raises InvalidKeyError.

    A key is 1 to 1024 characters of '/'-separated segments, each of ASCII letters, digits and
    ``. _ = -`` that does not start with '.': so no absolute path, no '.' or '..', no empty
    segment, no backslash, no NUL. Segments starting with '.' are refused because
    ``LocalStorage`` names its in-progress writes that way.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"storage key {key!r}: must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"storage key {key[:40]!r}...: longer than {MAX_KEY_LENGTH}")
    if "\x00" in key:
        raise InvalidKeyError(f"storage key {key!r}: contains a NUL character")
    if "\\" in key:
        raise InvalidKeyError(f"storage key {key!r}: contains a backslash; use '/' to separate")
    if key.startswith("/"):
        raise InvalidKeyError(f"storage key {key!r}: absolute; keys are relative to the root")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKeyError(
                f"storage key {key!r}: empty, '.' or '..' segment; keys may not leave or "
                f"repeat a folder"
            )
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKeyError(
                f"storage key {key!r}: segment {segment!r} must use only letters, digits and "
                f"'. _ = -', and not start with '.'"
            )
    return key


PRIVATE_FOLDER_MODE = 0o700
"""Mode of every folder the storage makes: its objects are private data (uploads, job state,
results), so only the service's own user may list or enter them."""

PRIVATE_FILE_MODE = 0o600
"""Mode of every object the storage writes (``tempfile.mkstemp`` makes files so)."""


class LocalStorage:
    """Objects as files under a root folder on a local (or mounted) filesystem.

    Writes go to a temporary file beside the target, are fsynced and renamed into place, and
    the rename is fsynced too: after a crash an object is either complete or absent.

    Everything held here is private to the service's user: folders are made 0700 and objects
    0600 whatever the process's umask, and a root the user owns is closed to others (0700)
    when opened, which also covers folders an older version made readable.

    Args:
        root: the folder holding every object; created when missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        _make_private_folders(self.root)
        info = self.root.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(self.root, PRIVATE_FOLDER_MODE)

    def _file(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def make_folder(self, prefix: str) -> Path:
        """Makes the local folder of ``prefix`` (and the folders above it) if missing, each
        0700, and returns it: for code that writes its own files there (a job's state)."""
        folder = self._file(prefix)
        _make_private_folders(folder)
        return folder

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        target = self._file(key)
        _make_private_folders(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # mkstemp's documented mode, made explicit
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_directory(target.parent)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return self._file(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object under storage key {key!r}") from None

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        target = self._file(prefix)
        count = len(self.list(prefix))
        if target.is_dir():
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()
        return count

    def path(self, key: str) -> Path:
        file = self._file(key)
        if not file.is_file():
            raise ObjectNotFoundError(f"no object under storage key {key!r}")
        return file

    def list(self, prefix: str = "") -> Sequence[str]:
        base = self._file(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        return sorted(self._walk(base))

    def _walk(self, base: Path) -> Iterator[str]:
        for folder, dirs, files in os.walk(base):
            # In-progress writes (and nothing else) start with '.'; see check_key.
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            relative = Path(folder).relative_to(self.root)
            for name in files:
                if not name.startswith("."):
                    yield (relative / name).as_posix()


register_storage("local", LocalStorage)


def _s3_storage(bucket: str, **config: Any) -> Storage:
    # Imported on first use: boto3 takes a while to import and only this backend needs it.
    from service.s3storage import S3Storage

    return S3Storage(bucket, **config)


register_storage("s3", _s3_storage)

COPY_BYTES = 1024 * 1024


def copy_object(source: Storage, target: Storage, key: str) -> None:
    """Copies the object under ``key`` from one storage to another, whole or not at all (the
    target's ``open_write``)."""
    with source.open_read(key) as reader, target.open_write(key) as writer:
        shutil.copyfileobj(reader, writer, COPY_BYTES)


@contextmanager
def local_copy(storage: Storage, key: str) -> Iterator[Path]:
    """Yields a local file holding the object under ``key``, for code that needs a path (the
    dataset loader picks a format by suffix, and zip and npz readers seek).

    A local backend yields its own file. A remote one downloads the object to a scratch file
    named like the key's last segment (so the suffix is kept), 0600 in a folder of its own
    that ``mkdtemp`` makes 0700 under ``TMPDIR``; both are deleted when the block ends,
    however it ends (only a process killed outright leaves them, to the system's tmp cleanup).

    Raises:
        ObjectNotFoundError: no object under ``key``.
    """
    path = storage.path(key)
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="privevo-") as folder:
        copy = Path(folder) / key.rsplit("/", 1)[-1]
        descriptor = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "wb") as target, storage.open_read(key) as source:
            shutil.copyfileobj(source, target, COPY_BYTES)
        yield copy


def _make_private_folders(folder: Path) -> None:
    """``mkdir -p`` with mode 0700 for every folder it makes (``Path.mkdir(parents=True)``
    gives the parents the default mode instead)."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_FOLDER_MODE)
        except FileExistsError:
            continue  # made meanwhile by another writer
        # mkdir's mode passes through the umask, which may take bits away but never adds any.
        os.chmod(path, PRIVATE_FOLDER_MODE)
