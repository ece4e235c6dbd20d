"""The font pool's cmap fast path against fontTools, on every font installed here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fontTools.ttLib import TTFont, TTLibError

from pe_core.apis import fonts
from pe_core.apis.fonts import (
    DRAWTEXT_FONT_DIRS,
    FONT_SUFFIXES,
    SYSTEM_FONT_DIR,
    best_cmap_glyph_ids,
    default_font_dirs,
    discover_fonts,
)

# Digits, letters, punctuation, accented and non-Latin letters, symbols, an astral code point,
# the format 4 sentinel and the last code point.
CODES = [
    *range(0x20, 0x7F),
    *map(ord, "éßŁΩЖא中あ한—€™∑√"),
    0x1F600,
    0x13000,
    0xFFFF,
    0x10FFFF,
]


def installed_fonts() -> list[Path]:
    found = sorted(
        {
            path.resolve()
            for folder in default_font_dirs()
            if folder.is_dir()
            for pattern in FONT_SUFFIXES
            for path in folder.rglob(pattern)
        }
    )
    if not found:
        pytest.skip("no fonts installed")
    return found


def test_glyph_ids_name_the_glyphs_get_best_cmap_maps_to() -> None:
    read = 0
    for path in installed_fonts():
        try:
            font, reference = TTFont(str(path), lazy=True), TTFont(str(path), lazy=True)
        except (TTLibError, OSError):  # unreadable: the pool skips it too
            continue
        with font, reference:
            ids = best_cmap_glyph_ids(font, CODES)
            if ids is None:
                continue
            read += 1
            expected = reference.getBestCmap() or {}
            got = {
                code: font.getGlyphName(glyph)
                for code, glyph in zip(CODES, ids, strict=True)
                if glyph
            }
        assert got == {code: expected[code] for code in CODES if code in expected}, path
    assert read >= 1  # the fast path was exercised, not skipped throughout


def test_the_pool_is_the_one_get_best_cmap_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["0", "7", "A", "ß"]
    fast = discover_fonts(texts)
    monkeypatch.setattr(fonts, "best_cmap_glyph_ids", lambda font, codes: None)
    assert discover_fonts(texts) == fast


def test_the_default_pool_is_what_install_fonts_installs() -> None:
    """drawtext's default folders are exactly those of scripts/install-fonts.sh's packages, so
    that fonts installed for anything else (Chromium's Liberation 1) change no run."""
    script = (Path(__file__).resolve().parents[3] / "scripts" / "install-fonts.sh").read_text()
    listed = script.split("packages=(", 1)[1].split(")", 1)[0].split()
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    folders = set()
    for package in listed:
        files = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        if files.returncode != 0:
            pytest.skip(f"{package} is not installed (make fonts installs it)")
        folders |= {
            str(Path(line).parent.relative_to(SYSTEM_FONT_DIR))
            for line in files.stdout.splitlines()
            if line.endswith((".ttf", ".otf"))
        }
    assert folders == set(DRAWTEXT_FONT_DIRS)
    assert [d for d in default_font_dirs() if d.is_relative_to(SYSTEM_FONT_DIR)] == [
        SYSTEM_FONT_DIR / folder for folder in sorted(DRAWTEXT_FONT_DIRS)
    ]


def test_the_pool_order_follows_the_folders_not_where_they_are(tmp_path: Path) -> None:
    """Folder by folder in the order given: a checkout under /tmp put matplotlib's fonts (in its
    .venv) before /usr/share/fonts when absolute paths were sorted, and one under /work after
    them, so the same installed files gave different font indexes."""
    sources = sorted(Path(matplotlib_fonts()).glob("DejaVu*.ttf"))[:2]
    assert len(sources) == 2
    late, early = tmp_path / "a-given-second", tmp_path / "z-given-first"
    for folder, source in ((early, sources[0]), (late, sources[1])):
        folder.mkdir()
        shutil.copy(source, folder / source.name)
    pool = discover_fonts(["0"], font_dirs=[early, late])
    assert [Path(font.path).parent for font in pool] == [early, late]
    reverse = discover_fonts(["0"], font_dirs=[late, early])
    assert [Path(font.path).parent for font in reverse] == [late, early]


def matplotlib_fonts() -> Path:
    folders = [d for d in default_font_dirs() if not d.is_relative_to(SYSTEM_FONT_DIR)]
    assert folders, "matplotlib ships DejaVu; the lock installs it"
    return folders[0]
