"""Zipping image folders and extracting result zips, and the package's light footprint."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from privevo_client.archive import safe_extract, zip_folder
from privevo_client.errors import UnsafeArchiveError


def _zip(members: dict[str, bytes], *, link: str | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (0o120777 << 16) | 0  # S_IFLNK: a symbolic link
            archive.writestr(info, "/etc/passwd")
    buffer.seek(0)
    return buffer


def test_safe_extract_writes_the_members(tmp_path: Path):
    members = {"privacy_report.json": b"{}", "synthetic/a/0.png": b"png", "samples/": b""}
    written = safe_extract(_zip(members), tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        "privacy_report.json",
        "synthetic/a/0.png",
    ]
    assert (tmp_path / "out" / "synthetic" / "a" / "0.png").read_bytes() == b"png"
    assert (tmp_path / "out" / "samples").is_dir()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../escape.txt", ".."),
        ("synthetic/../../escape.txt", ".."),
        ("/etc/escape.txt", "absolute"),
        ("C:/escape.txt", "drive"),
        ("synthetic\\..\\escape.txt", "backslash"),
    ],
)
def test_safe_extract_refuses_escaping_members_and_writes_nothing(
    tmp_path: Path, name: str, reason: str
):
    archive = _zip({"privacy_report.json": b"{}", name: b"x"})
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_refuses_links(tmp_path: Path):
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(_zip({"a.txt": b"a"}, link="synthetic/passwd"), tmp_path / "out")


def test_zip_folder_keeps_class_folders_and_skips_hidden_files(tmp_path: Path):
    for path in ["cat/1.png", "cat/2.png", "dog/1.png", ".git/config", "dog/.DS_Store"]:
        (tmp_path / "in" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / path).write_bytes(path.encode())
    assert zip_folder(tmp_path / "in", tmp_path / "in.zip") == 3
    with zipfile.ZipFile(tmp_path / "in.zip") as archive:
        assert archive.namelist() == ["cat/1.png", "cat/2.png", "dog/1.png"]
        assert archive.read("dog/1.png") == b"dog/1.png"
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(ValueError, match="no files"):
        zip_folder(tmp_path / "empty", tmp_path / "empty.zip")


def test_package_imports_without_heavy_dependencies():
    code = (
        "import sys, privevo_client\n"
        "heavy = {'torch', 'numpy', 'pe_core', 'service', 'fastapi'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
