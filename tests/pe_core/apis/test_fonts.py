"""The font pool's cmap fast path against fontTools, on every font installed here."""

from __future__ import annotations

from pathlib import Path

import pytest
from fontTools.ttLib import TTFont, TTLibError

from pe_core.apis import fonts
from pe_core.apis.fonts import FONT_SUFFIXES, best_cmap_glyph_ids, default_font_dirs, discover_fonts

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
