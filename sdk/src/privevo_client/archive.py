"""Zipping an image folder for upload, and extracting a job's result zip safely."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from privevo_client.errors import UnsafeArchiveError


def zip_folder(folder: Path, destination: Path | BinaryIO) -> int:
    """Zips the files under ``folder`` with paths relative to it (``<label>/<file>``).

    Hidden files and folders (names starting with a dot, like ``.DS_Store``) are left out, and
    symbolic links to folders are not followed. Images are compressed already, so members are
    stored uncompressed.

    Args:
        folder: a class-per-folder image directory.
        destination: the zip file to write.

    Returns:
        The number of files zipped.

    Raises:
        ValueError: the folder holds no files.
    """
    count = 0
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_STORED) as archive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(root, name)
                if name.startswith(".") or not path.is_file():
                    continue
                archive.write(path, path.relative_to(folder).as_posix())
                count += 1
    if count == 0:
        raise ValueError(f"{folder}: no files to upload")
    return count


def safe_extract(archive: Path | BinaryIO, directory: Path) -> list[Path]:
    """Extracts a zip into ``directory``, refusing it whole if any member would escape it.

    Every member is checked before anything is written: an absolute path, a drive letter, a
    backslash, a ``..`` component or a symbolic link refuses the archive.

    Args:
        archive: the zip file.
        directory: where to extract; created when missing. Existing files are overwritten.

    Returns:
        The files written, in archive order.

    Raises:
        UnsafeArchiveError: a member is unsafe; nothing was written.
    """
    root = directory.resolve()
    written: list[Path] = []
    with zipfile.ZipFile(archive) as zf:
        plan = []
        for info in zf.infolist():
            problem = _unsafe(info)
            target = root.joinpath(*PurePosixPath(info.filename).parts)
            if problem is None and not target.resolve().is_relative_to(root):
                problem = "resolves outside the folder"
            if problem is not None:
                raise UnsafeArchiveError(f"refusing zip member {info.filename!r}: {problem}")
            plan.append((info, target))
        root.mkdir(parents=True, exist_ok=True)
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            written.append(target)
    return written


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    """Why a member may not be extracted, or None when it may."""
    name = info.filename
    if not name or name.startswith("/"):
        return "absolute or empty path"
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "backslash or drive letter"
    if ".." in PurePosixPath(name).parts:
        return "'..' in its path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None
