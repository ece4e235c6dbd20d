"""Discovery of local TrueType fonts for the text-rendering simulator."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from pe_core.errors import PrivevoError

if TYPE_CHECKING:  # fontTools loads when fonts are discovered: the gateway never needs it
    from fontTools.ttLib import TTFont

SYSTEM_FONT_DIR = Path("/usr/share/fonts")
FONT_SUFFIXES = ("*.ttf", "*.otf")
_PROBE_SIZE = 32


@dataclass(frozen=True)
class FontInfo:
    """One usable font file.

    Attributes:
        path: absolute path of the .ttf file.
        name: the font's full name (name table ID 4), e.g. "DejaVu Sans Bold".
    """

    path: str
    name: str


def default_font_dirs() -> tuple[Path, ...]:
    """The system's font tree (Debian: ``fonts-*`` packages) and the fonts matplotlib ships.

    More fonts, above all handwriting ones (Debian's ``fonts-dkg-handwriting``,
    ``fonts-bwht``, ...), give the simulator more styles to evolve from (Sim-PE draws from
    thousands of fonts); the pool is recorded with every run because it depends on the machine.
    """
    dirs = [SYSTEM_FONT_DIR]
    # find_spec locates matplotlib without paying for its import.
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            dirs.append(Path(location) / "mpl-data" / "fonts" / "ttf")
    return tuple(dirs)


def _covers(font: TTFont, chars: Iterable[str]) -> bool:
    """Whether the font draws each character as itself.

    Symbol fonts map ASCII code points to unrelated glyphs (matplotlib's cmsy10 draws "0" as a
    prime, LastResort draws a placeholder box), so a cmap entry is not enough: the glyph's
    Adobe Glyph List name must also decode to the character ("zero", "uni0030", "zero.alt").
    """
    from fontTools.agl import toUnicode

    cmap = font.getBestCmap() or {}
    for char in chars:
        glyph = cmap.get(ord(char))
        if glyph is None or toUnicode(glyph) != char:
            return False
    return True


def _draws_ink(path: Path, chars: Iterable[str]) -> bool:
    """Whether every character renders visible pixels (some fonts map digits to empty glyphs)."""
    try:
        face = ImageFont.truetype(str(path), _PROBE_SIZE)
    except OSError:
        return False
    for char in chars:
        canvas = Image.new("L", (2 * _PROBE_SIZE, 2 * _PROBE_SIZE))
        ImageDraw.Draw(canvas).text((_PROBE_SIZE // 2, _PROBE_SIZE // 2), char, fill=255, font=face)
        if canvas.getbbox() is None:
            return False
    return True


def _full_name(font: TTFont, path: Path) -> str:
    name = font["name"].getDebugName(4) if "name" in font else None
    return name or path.stem


def discover_fonts(
    texts: Sequence[str],
    font_paths: Sequence[str | Path] | None = None,
    font_dirs: Sequence[str | Path] | None = None,
) -> tuple[FontInfo, ...]:
    """Lists the fonts that can draw every character of ``texts``.

    Candidates are ``font_paths`` if given, else the ``.ttf``/``.otf`` files anywhere under
    ``font_dirs`` (default:
    :func:`default_font_dirs`). They are sorted by path and fonts whose full name was already
    seen are dropped (DejaVu ships both with Debian and with matplotlib), so the pool, and with
    it the meaning of a font index, is deterministic for a given set of installed files.

    Args:
        texts: every string the simulator may draw; whitespace needs no glyph.
        font_paths: explicit .ttf files; a missing or unreadable file is an error.
        font_dirs: folders to scan when ``font_paths`` is None; missing folders are skipped.

    Returns:
        The usable fonts, in pool order.

    Raises:
        PrivevoError: an explicit font file is missing or unreadable, or no font can draw the
            texts.
    """
    chars = sorted({c for text in texts for c in text if not c.isspace()})
    if font_paths is not None:
        candidates = sorted(Path(p).resolve() for p in font_paths)
        for path in candidates:
            if not path.is_file():
                raise PrivevoError(f"font file {str(path)!r} does not exist")
    else:
        dirs = [Path(d) for d in (font_dirs if font_dirs is not None else default_font_dirs())]
        candidates = sorted(
            {
                p.resolve()
                for d in dirs
                if d.is_dir()
                for pattern in FONT_SUFFIXES
                for p in d.rglob(pattern)
            }
        )
    from fontTools.ttLib import TTFont, TTLibError

    pool: list[FontInfo] = []
    seen: set[str] = set()
    for path in candidates:
        try:
            font = TTFont(str(path), lazy=True)
        except (TTLibError, OSError) as exc:
            if font_paths is not None:
                raise PrivevoError(f"cannot read font file {str(path)!r}: {exc}") from exc
            continue
        with font:
            name = _full_name(font, path)
            if name in seen or not _covers(font, chars) or not _draws_ink(path, chars):
                continue
        seen.add(name)
        pool.append(FontInfo(path=str(path), name=name))
    if not pool:
        where = (
            "the given font_paths"
            if font_paths is not None
            else ", ".join(str(d) for d in (font_dirs or default_font_dirs()))
        )
        raise PrivevoError(
            f"no TrueType font in {where} can draw the characters {''.join(chars)!r}; "
            "install fonts (e.g. Debian's fonts-dejavu-core) or pass font_paths"
        )
    return tuple(pool)
