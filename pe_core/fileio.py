"""Crash-safe file writes shared by checkpoints, the ledger's release store and outputs.

Files are written owner-only (``tempfile.mkstemp`` makes them 0600, and a rename keeps that);
folders of private state are made owner-only with :func:`private_directory`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file, fsync, rename and a directory fsync: a
    crash leaves the old file or the new one, never half a file, and the rename is durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Makes a file's creation or rename in ``directory`` durable (POSIX)."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def private_directory(path: Path) -> Path:
    """Makes ``path`` (and any missing parents) a folder only its owner can read: 0700, also
    when it already existed with wider permissions. Returns ``path``."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
